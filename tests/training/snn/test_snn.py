"""Spiking neurons against hand-computed sequences of eqs. 5 and 6, surrogate gradients,
the fast custom-autograd path against plain autograd, surrogate swapping, spike recording
and ONNX export of an MLF unit."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch._inductor import cpp_builder

from training.snn import (
    EAGER,
    LIF,
    MLF,
    SURROGATES,
    ArcTan,
    Kernels,
    Rectangular,
    SigmoidDerivative,
    compiled_kernels,
    firing_rates,
    get_surrogate,
    mlf_backward,
    mlf_forward,
    mlf_reference,
    spike_count,
    spiking_neurons,
    use_kernels,
    use_surrogate,
)
from training.snn.kernels import MLFFunction

THRESHOLDS = (0.6, 1.6, 2.6)
DECAY = 0.25


def _v_th(thresholds: tuple[float, ...], dims: int) -> torch.Tensor:
    return torch.tensor(thresholds).view((len(thresholds),) + (1,) * (dims - 1))


# --------------------------------------------------------------------------- eq. 5: LIF

# u[t] = 0.25 * u[t-1] * (1 - o[t-1]) + x[t],  o[t] = 1[u[t] >= 0.6]
LIF_CASES = {
    # constant 0.7: fires at once; the hard reset drops the leak term every step
    # u = 0.7, 0.25*0.7*0 + 0.7 = 0.7, ...
    0.7: ([0.7, 0.7, 0.7, 0.7], [1.0, 1.0, 1.0, 1.0]),
    # constant 0.5: 0.5 (silent), 0.25*0.5 + 0.5 = 0.625 (fires), reset: 0.5, 0.625
    0.5: ([0.5, 0.625, 0.5, 0.625], [0.0, 1.0, 0.0, 1.0]),
    # constant 0.4: 0.4, 0.1 + 0.4 = 0.5, 0.125 + 0.4 = 0.525, 0.13125 + 0.4 = 0.53125;
    # the leak keeps it below 0.4 / (1 - 0.25) = 0.5333 < 0.6: never fires
    0.4: ([0.4, 0.5, 0.525, 0.53125], [0.0, 0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["reference", "autograd-fn"])
def test_lif_constant_inputs_match_eq5_by_hand(requires_grad: bool) -> None:
    levels = sorted(LIF_CASES)
    x = torch.tensor(levels).repeat(4, 1).unsqueeze(1)  # [T=4, B=1, N=3]
    x.requires_grad_(requires_grad)
    neuron = LIF(threshold=0.6, decay=DECAY)
    out = neuron(x)
    expected_spikes = torch.tensor([LIF_CASES[v][1] for v in levels]).T.unsqueeze(1)
    assert torch.equal(out.detach(), expected_spikes)

    _, potentials = mlf_forward(x.detach(), _v_th((0.6,), x.dim()), DECAY)
    expected_u = torch.tensor([LIF_CASES[v][0] for v in levels]).T.view(4, 1, 1, 3)
    torch.testing.assert_close(potentials, expected_u)


# --------------------------------------------------------------------------- eq. 6: MLF

# Neuron 0 of a K=3 MLF unit (V_th = 0.6, 1.6, 2.6; k_tau = 0.25). Each unit keeps its own
# membrane and resets only when it fired itself:
#  t  x     u1 (0.6)               u2 (1.6)                      u3 (2.6)                     out
#  0  0.7   0.7 -> 1               0.7                           0.7                          1
#  1  1.0   0 + 1.0 = 1.0 -> 1     0.175 + 1.0 = 1.175           1.175                        1
#  2  1.3   0 + 1.3 = 1.3 -> 1     0.29375 + 1.3 = 1.59375 (<1.6) 1.59375                     1
#  3  2.7   0 + 2.7 = 2.7 -> 1     0.3984375 + 2.7 = 3.0984375 ->1  3.0984375 -> 1            3
#  4  1.5   0 + 1.5 = 1.5 -> 1     0 + 1.5 = 1.5                 0 + 1.5 = 1.5                1
#  5  0.3   0 + 0.3 = 0.3          0.375 + 0.3 = 0.675           0.675                        0
#  6  1.5   0.075 + 1.5 = 1.575 ->1  0.16875 + 1.5 = 1.66875 -> 1  1.66875                    2
#  7  2.2   0 + 2.2 = 2.2 -> 1     0 + 2.2 = 2.2 -> 1            0.4171875 + 2.2 = 2.6171875 ->1 3
MLF_INPUT = [0.7, 1.0, 1.3, 2.7, 1.5, 0.3, 1.5, 2.2]
MLF_POTENTIALS = [
    [0.7, 0.7, 0.7],
    [1.0, 1.175, 1.175],
    [1.3, 1.59375, 1.59375],
    [2.7, 3.0984375, 3.0984375],
    [1.5, 1.5, 1.5],
    [0.3, 0.675, 0.675],
    [1.575, 1.66875, 1.66875],
    [2.2, 2.2, 2.6171875],
]
MLF_OUTPUT = [1.0, 1.0, 1.0, 3.0, 1.0, 0.0, 2.0, 3.0]
# Neuron 1: constant 0.5. u1 = 0.5, 0.625 (fires), 0.5, 0.625, ... as for the LIF above;
# u2 = u3 = 0.5, 0.625, 0.65625, 0.6640625, ... approach 0.5 / 0.75 = 0.667 and stay silent.
CONSTANT_OUTPUT = [0.0, 1.0] * 4


def _mlf_input() -> torch.Tensor:
    return torch.tensor([MLF_INPUT, [0.5] * 8]).T.unsqueeze(1).contiguous()  # [T=8, B=1, N=2]


@pytest.mark.parametrize("requires_grad", [False, True], ids=["reference", "autograd-fn"])
def test_mlf_sequence_matches_eq6_by_hand(requires_grad: bool) -> None:
    x = _mlf_input().requires_grad_(requires_grad)
    out = MLF(THRESHOLDS, DECAY)(x)
    expected = torch.tensor([MLF_OUTPUT, CONSTANT_OUTPUT]).T.unsqueeze(1)
    assert torch.equal(out.detach(), expected)

    _, potentials = mlf_forward(x.detach(), _v_th(THRESHOLDS, x.dim()), DECAY)
    # potentials: [T, K, B, N]; neuron 0 of batch item 0
    torch.testing.assert_close(potentials[:, :, 0, 0], torch.tensor(MLF_POTENTIALS))
    torch.testing.assert_close(potentials[:2, 0, 0, 1], torch.tensor([0.5, 0.625]))
    torch.testing.assert_close(potentials[:3, 2, 0, 1], torch.tensor([0.5, 0.625, 0.65625]))


def test_spike_recording_counts_the_hand_computed_spikes() -> None:
    model = nn.Sequential(MLF(THRESHOLDS, DECAY))
    x = _mlf_input()
    # neuron 0: 1+1+1+3+1+0+2+3 = 12 spikes, neuron 1: 4 spikes
    assert spike_count(model, x).tolist() == [16.0]
    # (t, neuron) pairs with output > 0: 7 of 8 for neuron 0, 4 of 8 for neuron 1
    assert firing_rates(model, x) == {"0": pytest.approx(11 / 16)}


def test_mlf_rejects_empty_thresholds() -> None:
    with pytest.raises(ValueError, match="threshold"):
        MLF(())


# --------------------------------------------------------------------------- surrogates

# x = u - V_th
POINTS = [-1.5, -0.5, -0.3, -0.2, 0.0, 0.2, 0.25, 0.5, 0.9, 1.0, 1.5]
# rectangular of width a: (1/a) * 1[|x| < a/2], strict at the edges
RECT_EXPECTED = {
    "rect1": [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # |x| < 0.5, height 1
    "rect0.5": [0, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0],  # |x| < 0.25, height 2
    "rect2": [0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0],  # |x| < 1, height 0.5
    "ste": [1] * len(POINTS),
    "none": [0] * len(POINTS),
}
SMOOTH_POINTS = [-0.5, 0.0, 0.25, 1.0]
SMOOTH_EXPECTED = {
    # 4 * s * (1 - s), s = sigmoid(4x): sigmoid(-2) = 0.1192029 -> 4 * 0.1192029 * 0.8807971
    # = 0.4199743; x = 0: 4 * 0.25 = 1; sigmoid(1) = 0.7310586 -> 0.7864477;
    # sigmoid(4) = 0.9820138 -> 4 * 0.9820138 * 0.0179862 = 0.0706508
    "sigmoid4": [0.4199743, 1.0, 0.7864477, 0.0706508],
    # (2/2) / (1 + (pi/2 * 2 * x)^2) = 1 / (1 + (pi x)^2): 1 / (1 + 2.4674011) = 0.2884004,
    # 1, 1 / (1 + 0.6168503) = 0.6184865, 1 / (1 + 9.8696044) = 0.0919997
    "arctan2": [0.2884004, 1.0, 0.6184865, 0.0919997],
}


def test_every_registered_surrogate_has_expected_values() -> None:
    assert set(RECT_EXPECTED) | set(SMOOTH_EXPECTED) == set(SURROGATES)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_gradient_at_hand_picked_points(name: str) -> None:
    points, expected = (
        (POINTS, RECT_EXPECTED[name])
        if name in RECT_EXPECTED
        else (SMOOTH_POINTS, SMOOTH_EXPECTED[name])
    )
    x = torch.tensor(points, requires_grad=True)
    spikes = get_surrogate(name)(x)
    # forward is the Heaviside step whatever the surrogate: H(0) = 1
    assert spikes.tolist() == [1.0 if p >= 0 else 0.0 for p in points]
    spikes.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor(expected, dtype=torch.float32))


def test_defaults_are_the_papers() -> None:
    neuron = MLF()
    assert neuron.thresholds == THRESHOLDS
    assert math.isclose(neuron.decay, DECAY)
    assert neuron.surrogate == Rectangular(1.0)  # rectangular window, a = 1
    assert SURROGATES["rect1"] == Rectangular(1.0)
    assert SURROGATES["sigmoid4"] == SigmoidDerivative(4.0)
    assert SURROGATES["arctan2"] == ArcTan(2.0)


def test_unknown_surrogate_names_the_choices() -> None:
    with pytest.raises(ValueError, match="rect1") as excinfo:
        get_surrogate("triangle")
    assert "'triangle'" in str(excinfo.value)


# --------------------------------------------------------------------------- fast path


def _random_membrane_input(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    # centred near the thresholds so every unit fires sometimes and stays silent sometimes
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.2 + 1.0


def _check_fast_path_matches_autograd(
    surrogate_name: str, thresholds: tuple[float, ...], kernels=EAGER
) -> None:
    surrogate = get_surrogate(surrogate_name)
    x = _random_membrane_input(0, (4, 3, 2, 5))
    v_th = _v_th(thresholds, x.dim())
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))

    x_ref = x.clone().requires_grad_()
    out_ref = mlf_reference(x_ref, v_th, DECAY, surrogate)
    out_ref.backward(grad_out)

    x_fast = x.clone().requires_grad_()
    out_fast = MLFFunction.apply(x_fast, v_th, DECAY, surrogate, kernels)
    out_fast.backward(grad_out)

    assert torch.equal(out_fast, out_ref)
    assert 0 < out_ref.mean() < len(thresholds)  # neither silent nor saturated
    if surrogate_name != "none":
        assert x_ref.grad.abs().sum() > 0
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


FAST_PATH_SURROGATES = ["rect1", "rect0.5", "rect2", "sigmoid4", "arctan2", "ste", "none"]


@pytest.mark.parametrize("thresholds", [THRESHOLDS, (0.6,)], ids=["K3", "K1"])
@pytest.mark.parametrize("name", FAST_PATH_SURROGATES)
def test_fast_path_matches_autograd_on_reference(name: str, thresholds: tuple[float, ...]) -> None:
    _check_fast_path_matches_autograd(name, thresholds)


def _compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor raises its own InvalidCxxCompiler
        return f"no C++ compiler for inductor ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture
def compiled():
    """The compiled neuron kernels (skipped where inductor cannot build CPU code)."""
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    return compiled_kernels()


# two widths of the same surrogate class: a swapped surrogate must not reuse a stale kernel
@pytest.mark.parametrize("name", ["rect1", "rect0.5"])
@pytest.mark.slow
def test_compiled_fast_path_matches_autograd_on_reference(compiled, name: str) -> None:
    assert compiled.forward is not mlf_forward and compiled.name == "compiled"
    _check_fast_path_matches_autograd(name, THRESHOLDS, compiled)


def test_kernels_are_chosen_per_model_not_per_process() -> None:
    first, second = nn.Sequential(MLF(), LIF()), nn.Sequential(MLF())
    fast = Kernels("test", mlf_forward, mlf_backward)
    use_kernels(first, fast)
    assert [m.kernels for _, m in spiking_neurons(first)] == [fast, fast]
    assert [m.kernels for _, m in spiking_neurons(second)] == [EAGER]
    with pytest.raises(ValueError, match="unknown kernels"):
        use_kernels(second, "fastest")
    x = _random_membrane_input(3, (4, 2, 6)).requires_grad_()
    assert torch.equal(first[0](x), second[0](x))  # same results whichever kernels


# --------------------------------------------------------------------------- behaviour


def test_no_state_is_carried_between_calls() -> None:
    neuron = MLF()
    a = _random_membrane_input(1, (4, 2, 6))
    b = _random_membrane_input(2, (4, 2, 6))
    first = neuron(a)
    neuron(b)
    assert torch.equal(neuron(a), first)
    x = a.clone().requires_grad_()
    assert torch.equal(neuron(x), first)


def test_gradient_reaches_the_input_in_eval_mode() -> None:
    model = nn.Sequential(MLF(), nn.Flatten(), nn.Linear(2 * 6, 1)).eval()
    x = _random_membrane_input(3, (4, 2, 6)).requires_grad_()
    model(x).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_use_surrogate_swaps_and_restores() -> None:
    model = nn.Sequential(MLF(), LIF(), nn.Sequential(MLF()))
    originals = [m.surrogate for _, m in spiking_neurons(model)]
    assert len(originals) == 3
    x = _random_membrane_input(4, (4, 2, 6)).requires_grad_()

    with use_surrogate(model, "none"):
        assert all(m.surrogate is SURROGATES["none"] for _, m in spiking_neurons(model))
        model(x).sum().backward()
    assert torch.count_nonzero(x.grad) == 0  # the true step derivative kills the gradient

    with use_surrogate(model, SigmoidDerivative(2.0)):
        assert all(m.surrogate == SigmoidDerivative(2.0) for _, m in spiking_neurons(model))
    assert [m.surrogate for _, m in spiking_neurons(model)] == originals
    assert all(
        m.surrogate is old for (_, m), old in zip(spiking_neurons(model), originals, strict=True)
    )

    with pytest.raises(RuntimeError, match="inside"), use_surrogate(model, "ste"):
        raise RuntimeError("inside")
    assert [m.surrogate for _, m in spiking_neurons(model)] == originals

    x.grad = None
    model(x).sum().backward()
    assert torch.count_nonzero(x.grad) > 0

    with pytest.raises(ValueError, match="unknown surrogate"), use_surrogate(model, "nope"):
        pass


# --------------------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_mlf_exports_to_onnx_and_onnxruntime_matches(tmp_path) -> None:
    """With the dynamo exporter, the only one export uses: no fallback that could pass
    while it fails."""
    neuron = MLF(THRESHOLDS, DECAY).eval()
    x = _mlf_input().expand(8, 3, 2).contiguous()
    x[:, 1] = _random_membrane_input(5, (8, 2))
    x[:, 2] = _random_membrane_input(6, (8, 2))
    path = str(tmp_path / "mlf.onnx")
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(neuron, (x,), path, dynamo=True, verbose=False, input_names=["x"])
        expected = neuron(x).numpy()

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[:, 0, 0], MLF_OUTPUT)
    assert len(np.unique(got)) == 4  # spike counts 0, 1, 2 and 3 all occur
