"""The service with and without the native MLF kernel: the same answers, and it says which."""

from __future__ import annotations

import numpy as np
import pytest

import mlf_kernel
from service.config import Settings
from service.runtime import Runtime

NAME = "tiny-fashion-mnist"


@pytest.fixture
def clients(make_client, kernel_library):
    return {mode: make_client(mlf_kernel=mode) for mode in ("auto", "off")}


def test_identical_answers_with_and_without_the_kernel(clients, fashion_png):
    answers = {}
    for mode, client in clients.items():
        ready = client.get("/readyz").json()
        assert ready["neuron_kernel"]["mode"] == ("native" if mode == "auto" else "fallback")
        answers[mode] = [
            client.post("/classify", files={"file": ("x.png", fashion_png, "image/png")},
                        params={"purify": purify}).json()
            for purify in ("true", "false")
        ]  # fmt: skip
    for with_kernel, without in zip(answers["auto"], answers["off"], strict=True):
        with_kernel.pop("timings_ms"), without.pop("timings_ms")
        assert with_kernel == without
        assert with_kernel["spikes"]["classifier"] > 0  # the network fires: a real comparison


def test_identical_batches_with_and_without_the_kernel(tiny_model_dir, kernel_library):
    images = np.random.default_rng(0).random((24, 1, 28, 28), np.float32)
    everything = np.ones(len(images), bool)
    results = {}
    for mode in ("auto", "off"):
        settings = Settings(model_dir=tiny_model_dir, intra_op_threads=1, mlf_kernel=mode)
        runtime = Runtime(tiny_model_dir, settings)
        results[mode] = runtime.run(images, everything, everything)
        assert runtime.kernel.mode == ("native" if mode == "auto" else "fallback")
    native, fallback = results["auto"], results["off"]
    for field in ("purified", "noise_map", "purifier_spikes", "logits", "classifier_spikes"):
        np.testing.assert_array_equal(getattr(native, field), getattr(fallback, field))
    assert len(np.unique(native.classifier_spikes)) > 1  # depends on the input


def test_kernel_reported_in_metadata_and_metrics(clients):
    native, fallback = clients["auto"], clients["off"]
    assert native.get(f"/v2/models/{NAME}").json()["parameters"]["neuron_kernel"] == "native"
    assert fallback.get(f"/v2/models/{NAME}").json()["parameters"]["neuron_kernel"] == "fallback"
    metrics = native.get("/metrics").text
    assert 'spikeguard_neuron_kernel{mode="native"} 1.0' in metrics
    assert 'spikeguard_neuron_kernel{mode="fallback"} 0.0' in metrics
    assert native.get("/readyz").json()["neuron_kernel"]["isa"] == mlf_kernel.isa()


def test_missing_library_falls_back(make_client, monkeypatch, tmp_path):
    monkeypatch.setenv(mlf_kernel.ENV_LIBRARY, str(tmp_path / "absent.so"))
    client = make_client()
    kernel = client.get("/readyz").json()["neuron_kernel"]
    assert kernel["mode"] == "fallback" and "not built" in kernel["reason"]
