"""The native MLF kernel against the function body and the PyTorch reference (eq. 6).

Every comparison is exact (``array_equal``): the kernel computes the exported graph's
float32 operations in the same order, so a spike never differs, not even on inputs that
land a membrane potential exactly on a threshold."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import mlf_kernel
from training.snn import Rectangular, mlf_reference


def reference(x: np.ndarray, thresholds, decay: float) -> tuple[np.ndarray, np.ndarray]:
    v_th = torch.tensor(thresholds, dtype=torch.float32).view((-1,) + (1,) * (x.ndim - 1))
    with torch.no_grad():
        y = mlf_reference(torch.from_numpy(x), v_th, decay, Rectangular()).numpy()
    return y, y.sum(axis=(0, *range(2, x.ndim)))


def grid_input(shape, seed: int) -> np.ndarray:
    """Currents on a 0.05 grid: sums and decays of them land exactly on (and just off)
    thresholds such as 0.6 = 0.4 * 0.25 + 0.5 over and over."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-8, 66, size=shape) * np.float32(0.05)).astype(np.float32)


CASES = [
    # (shape [T, B, ...], thresholds, decay)
    ((4, 3, 8, 5, 5), (0.6, 1.6, 2.6), 0.25),  # the default neuron; 200 positions: tail path
    ((7, 2, 3, 50, 50), (0.6, 1.6, 2.6), 0.25),  # T = 7, 7500 positions: several chunks
    ((2, 5, 17), (0.3, 0.9, 1.4, 2.2, 3.1), 0.5),  # K = 5, rank 3
    ((1, 4, 33), (0.6,), 0.25),  # T = 1, K = 1 (a LIF neuron)
    ((5, 1, 4, 4, 4), (1.0, 2.0), 0.9),  # K = 2, batch 1
]


@pytest.mark.parametrize(("shape", "thresholds", "decay"), CASES)
def test_native_equals_function_equals_pytorch(run_mlf, shape, thresholds, decay):
    x = grid_input(shape, seed=len(shape) + shape[0])
    expected_y, expected_count = reference(x, thresholds, decay)
    native = run_mlf(x, thresholds, decay, native=True)
    function = run_mlf(x, thresholds, decay, native=False)
    for y, count in (native, function):
        assert y.shape == x.shape and count.shape == (x.shape[1],)
        np.testing.assert_array_equal(y, expected_y)
        np.testing.assert_array_equal(count, expected_count)
    # the test means something: units fire at every level, and not everywhere
    assert 0 < (expected_y > 0).mean() < 1
    assert expected_y.max() == len(thresholds)


def test_values_exactly_at_a_threshold(run_mlf):
    th = np.float32([0.6, 1.6, 2.6])
    below = np.nextafter(th, np.float32(0))
    above = np.nextafter(th, np.float32(10))
    # one position per value, presented at every step; then a decayed potential that sums
    # to exactly 0.6 at step 1 (0.4 * 0.25 + 0.5) without firing at step 0
    values = np.concatenate([th, below, above, [0.0, -0.0]]).astype(np.float32)
    pattern = np.tile(values, (4, 1, 1)).astype(np.float32)  # [T=4, B=1, 11]
    decayed = np.zeros((4, 1, 1), np.float32)
    decayed[0], decayed[1] = 0.4, np.float32(0.6) - np.float32(0.4) * np.float32(0.25)
    pattern = np.concatenate([pattern, decayed], axis=2)
    # 5 copies: 60 positions, so the pattern runs through the 16-lane path and the tail
    x = np.tile(pattern, (1, 1, 5))
    expected_y, expected_count = reference(x, th, 0.25)
    assert expected_y[0, 0, :3].tolist() == [1, 2, 3]  # at a threshold: fires
    assert expected_y[0, 0, 3:6].tolist() == [0, 1, 2]  # one ulp below: does not
    assert expected_y[1, 0, 11] == 1  # the decayed sum reaches 0.6 exactly
    for native in (True, False):
        y, count = run_mlf(x, th, 0.25, native=native)
        np.testing.assert_array_equal(y, expected_y)
        np.testing.assert_array_equal(count, expected_count)


def test_every_vectorised_variant_gives_the_same_spikes(run_mlf, kernel_library, monkeypatch):
    x = grid_input((4, 3, 6, 29, 29), seed=7)
    expected_y, expected_count = reference(x, (0.6, 1.6, 2.6), 0.25)
    ran = []
    for variant in ("generic", "avx2", "avx512"):
        monkeypatch.setenv("SPIKEGUARD_MLF_ISA", variant)
        if mlf_kernel.isa(kernel_library) == "unsupported":
            continue
        y, count = run_mlf(x, (0.6, 1.6, 2.6), 0.25, native=True)
        np.testing.assert_array_equal(y, expected_y)
        np.testing.assert_array_equal(count, expected_count)
        ran.append(variant)
    assert "generic" in ran


def test_non_finite_inputs_match_the_function(run_mlf):
    """inf and NaN: the kernel follows the function body's ``Where`` reset exactly."""
    x = grid_input((4, 2, 40), seed=3)
    x[0, 0, :4] = [np.inf, -np.inf, np.nan, 1e38]
    x[2, 1, 5:8] = [np.nan, np.inf, -np.inf]
    native = run_mlf(x, (0.6, 1.6, 2.6), 0.25, native=True)
    function = run_mlf(x, (0.6, 1.6, 2.6), 0.25, native=False)
    for a, b in zip(native, function, strict=True):
        np.testing.assert_array_equal(a, b)


def test_library_reports_a_variant(kernel_library):
    assert os.environ.get("SPIKEGUARD_MLF_ISA") is None
    assert mlf_kernel.isa(kernel_library) in ("avx512", "avx2", "generic")


def test_wrong_timesteps_attribute_is_an_error(kernel_library):
    import onnxruntime as ort

    from tests.kernel.conftest import mlf_model

    model = mlf_model(3, (0.6,), 0.25, timesteps=3)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    mlf_kernel.register(options, kernel_library)
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    with pytest.raises(Exception, match="timesteps"):
        session.run(None, {"X": np.zeros((4, 1, 2), np.float32)})


def test_missing_library_is_reported(tmp_path):
    import onnxruntime as ort

    with pytest.raises(mlf_kernel.KernelUnavailable, match="not built"):
        mlf_kernel.register(ort.SessionOptions(), tmp_path / "nothing.so")
