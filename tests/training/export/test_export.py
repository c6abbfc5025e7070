"""ONNX export: ONNX Runtime reproduces PyTorch on a tiny trained (firing) model; the
manifest describes the files; the command refuses what it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract import sha256_file, validate_model_dir
from training.__main__ import main
from training.checkpoint import load_model
from training.data import load_split
from training.export import PARITY_ATOL, Parity
from training.snn import SpikeRecorder


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_split("fashion-mnist", train=False).subset(16, seed=1).float_images()


@pytest.fixture(scope="module")
def reference(tiny_build: Path, test_images) -> dict:
    """One PyTorch forward pass of each network on ``test_images``, with the spike
    counts and firing rates its hooks recorded."""
    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    with (
        torch.no_grad(),
        SpikeRecorder(classifier) as classifier_spikes,
        SpikeRecorder(purifier) as purifier_spikes,
    ):
        purified, noise_level = purifier(test_images)
        logits = classifier(test_images)
    return {
        "purified": purified.numpy(),
        "noise_level": noise_level.numpy(),
        "logits": logits.numpy(),
        "classifier_spikes": classifier_spikes.total().numpy(),
        "purifier_spikes": purifier_spikes.total().numpy(),
        "rates": {"classifier": classifier_spikes.rates, "purifier": purifier_spikes.rates},
    }


def test_every_spiking_layer_fires(reference):
    """The parity below means something only if the networks are not silent."""
    for network, rates in reference["rates"].items():
        assert rates and min(rates.values()) > 0, (network, rates)


def test_onnx_matches_pytorch(reference, tiny_model_dir: Path, test_images):
    """Equal to rounding on every image whose spike counts agree; an image where a
    membrane potential sits within rounding of a threshold may fire differently (see
    ``training.export.Parity``), but such flips are rare."""
    sessions = {
        name: ort.InferenceSession(str(tiny_model_dir / f"{name}.onnx"))
        for name in ("purifier", "classifier")
    }
    x = test_images.numpy()
    purified, noise_level, purifier_spikes = sessions["purifier"].run(None, {"image": x})
    logits, classifier_spikes = sessions["classifier"].run(None, {"image": x})
    same_purifier = purifier_spikes == reference["purifier_spikes"]
    same_classifier = classifier_spikes == reference["classifier_spikes"]
    assert same_purifier.sum() >= len(x) - 1 and same_classifier.sum() >= len(x) - 1
    np.testing.assert_allclose(
        logits[same_classifier], reference["logits"][same_classifier], rtol=0, atol=PARITY_ATOL
    )
    for ours, theirs in ((purified, "purified"), (noise_level, "noise_level")):
        np.testing.assert_allclose(
            ours[same_purifier], reference[theirs][same_purifier], rtol=0, atol=PARITY_ATOL
        )
    assert (logits.argmax(1) == reference["logits"].argmax(1))[same_classifier].all()
    # outputs depend on the input: a silent network would give one row for all images
    assert classifier_spikes.min() > 0 and purifier_spikes.min() > 0
    assert len(np.unique(classifier_spikes)) > 1
    assert np.ptp(logits, axis=0).max() > 1e-3
    assert np.abs(purified - x).max() > 1e-3


def test_parity_check_catches_a_wrong_graph(tiny_build: Path, tiny_model_dir: Path, test_images):
    """``check_parity`` against graphs of *another* model (same shapes, other weights):
    the divergence is on most images, so it is reported, not excused as threshold flips."""
    from training.export import ClassifierGraph, PurifierGraph, check_parity, ort_session

    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    with torch.no_grad():
        for p in classifier.fc.parameters():
            p.mul_(1.5)
        for p in purifier.denoiser.head.parameters():
            p.add_(0.05)
    parity = check_parity(
        ClassifierGraph(classifier).eval(),
        PurifierGraph(purifier).eval(),
        ort_session(tiny_model_dir / "classifier.onnx"),
        ort_session(tiny_model_dir / "purifier.onnx"),
        test_images,
    )
    problems = " ".join(parity.problems())
    assert "logits differ" in problems and "purified pixels differ" in problems


def test_batch_axis_is_dynamic(tiny_model_dir: Path, test_images):
    session = ort.InferenceSession(str(tiny_model_dir / "classifier.onnx"))
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0]
    assert isinstance(session.get_inputs()[0].shape[0], str)
    full, _ = session.run(None, {"image": test_images[:7].numpy()})
    single, _ = session.run(None, {"image": test_images[3:4].numpy()})
    assert full.shape == (7, 10)
    np.testing.assert_allclose(single[0], full[3], atol=1e-5)


def test_io_names_follow_the_contract(tiny_model_dir: Path):
    names = {}
    for name in ("purifier", "classifier"):
        session = ort.InferenceSession(str(tiny_model_dir / f"{name}.onnx"))
        names[name] = (
            [i.name for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
        )
    assert names == {
        "purifier": (["image"], ["purified", "noise_level", "spikes"]),
        "classifier": (["image"], ["logits", "spikes"]),
    }


def test_manifest(tiny_model_dir: Path):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["name"] == "tiny-fashion-mnist" and manifest["version"] == "0.0.1"
    assert manifest["dataset"] == "fashion-mnist" and len(manifest["class_names"]) == 10
    assert manifest["input"] == {
        "name": "image",
        "dtype": "float32",
        "layout": "NCHW",
        "channels": 1,
        "height": 28,
        "width": 28,
        "value_range": [0.0, 1.0],
    }
    assert manifest["normalization"]["inside_graph"] is True
    assert manifest["neurons"] == {"timesteps": 2, "thresholds": [0.6, 1.6, 2.6], "decay": 0.25}
    for role, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tiny_model_dir / entry["path"]), role
        assert entry["inputs"] == ["image"]
    assert manifest["training"]["classifier"]["steps"] > 0
    metrics = manifest["metrics"]
    assert metrics["eval_images"] == 200
    assert 0 <= metrics["clean_accuracy"] <= 1 and 0 <= metrics["purified_clean_accuracy"] <= 1
    parity = manifest["export"]["parity"]
    assert parity["logits_max_abs"] < PARITY_ATOL and parity["purified_max_abs"] < PARITY_ATOL
    assert parity["top1_disagreements_without_flip"] == 0
    assert parity["flipped"] <= 0.05 * parity["images"]
    assert parity["classifier_mean_spikes"] > 0 and parity["purifier_mean_spikes"] > 0
    assert validate_model_dir(tiny_model_dir)[1] == []


def test_existing_directory_needs_force(tiny_build: Path, tmp_path: Path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("mine")
    code = main(
        [
            "export",
            "--classifier",
            str(tiny_build / "classifier.safetensors"),
            "--purifier",
            str(tiny_build / "purifier.safetensors"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--force" in err and len(err.splitlines()) == 1
    assert (out / "keep").read_text() == "mine"
    # the command leaves autograd as it found it (tests and other commands run in-process)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--classifier", "missing.safetensors"], "not found"),
        (["--eval-images", "0"], "--eval-images"),
        (["--metrics-json", "missing.json"], "--metrics-json"),
        (["--swap"], "not a classifier"),
    ],
)
def test_bad_arguments_exit_2(tiny_build: Path, tmp_path: Path, capsys, args, mentions):
    classifier = str(tiny_build / "classifier.safetensors")
    purifier = str(tiny_build / "purifier.safetensors")
    if args == ["--swap"]:
        classifier, purifier, args = purifier, classifier, []
    argv = ["export", "--classifier", classifier, "--purifier", purifier]
    argv += ["--out", str(tmp_path / "model"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert mentions in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def parity(**changes) -> Parity:
    good = {
        "images": 256,
        "flipped": 1,
        "logits_max_abs": 1e-6,
        "purified_max_abs": 1e-7,
        "noise_level_max_abs": 1e-7,
        "logits_max_abs_all": 0.1,
        "purified_max_abs_all": 0.02,
        "top1_agreement": 1.0,
        "purified_top1_agreement": 1.0,
        "top1_disagreements_without_flip": 0,
        "classifier_mean_spikes": 1000.0,
        "purifier_mean_spikes": 2000.0,
    }
    return Parity(**(good | changes))


def test_parity_problems_are_reported():
    assert parity().problems() == []
    assert "logits differ by 0.003" in " ".join(parity(logits_max_abs=3e-3).problems())
    many_flips = " ".join(parity(flipped=40).problems())
    assert "40 of 256" in many_flips
    top1 = parity(top1_disagreements_without_flip=2, top1_agreement=0.99).problems()
    assert any("top-1 differs on 2 images" in p for p in top1)
    assert any("silent" in p for p in parity(classifier_mean_spikes=0.0).problems())
