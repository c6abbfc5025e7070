"""The ONNX Runtime layer on its own: mixed batches, providers, manifest checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.runtime import CPU, ModelLoadError, Runtime, read_manifest, requested_providers


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> Runtime:
    return Runtime(tiny_model_dir, Settings(model_dir=tiny_model_dir, providers="cpu"))


def test_mixed_batch_equals_separate_runs(runtime: Runtime, fashion_images):
    images = (fashion_images[0][:4].astype(np.float32) / 255.0)[:, None]
    purify = np.array([True, False, True, False])
    classify = np.array([True, True, False, True])
    mixed = runtime.run(images, purify, classify)
    for i in range(4):
        alone = runtime.run(images[i : i + 1], purify[i : i + 1], classify[i : i + 1])
        if purify[i]:
            np.testing.assert_allclose(mixed.purified[i], alone.purified[0], atol=1e-6)
            assert mixed.purifier_spikes[i] == alone.purifier_spikes[0] > 0
        else:
            assert np.isnan(mixed.purifier_spikes[i]) and np.isnan(mixed.noise_level[i])
        if classify[i]:
            np.testing.assert_allclose(mixed.logits[i], alone.logits[0], atol=1e-5)
            assert mixed.classifier_spikes[i] == alone.classifier_spikes[0] > 0
        else:
            assert np.isnan(mixed.classifier_spikes[i])
    assert set(mixed.timings) == {"purify", "classify"}


def test_cpu_setting_gives_cpu_sessions(runtime: Runtime):
    assert requested_providers("cpu") == [CPU]
    assert runtime.providers == {"purifier": CPU, "classifier": CPU}
    assert runtime.provider == CPU


def test_manifest_missing_a_field(model_dir_copy: Path):
    manifest = json.loads((model_dir_copy / "manifest.json").read_text())
    del manifest["class_names"]
    (model_dir_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="class_names"):
        read_manifest(model_dir_copy)


def test_manifest_that_is_not_json(model_dir_copy: Path):
    (model_dir_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable manifest"):
        read_manifest(model_dir_copy)


def test_session_options_follow_settings(tiny_model_dir: Path):
    import onnxruntime as ort

    from service.runtime import session_options

    options = session_options(Settings(model_dir=tiny_model_dir, intra_op_threads=3))
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = Settings(model_dir=tiny_model_dir, intra_op_spinning=True)
    assert (
        session_options(spinning).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    )
