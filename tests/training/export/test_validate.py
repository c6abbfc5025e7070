"""``validate-model`` and the packaging step: a directory export made keeps the contract,
and each way of breaking it is reported (exit 1), not missed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract import SampleRecord, sha256_file, validate_model_dir, write_manifest
from training.__main__ import main
from training.export import ClassifierGraph, PurifierGraph, build_manifest, validate_model
from training.export.package import Checkpoint, matching_dataset
from training.export.parity import Parity


@pytest.mark.slow
def test_the_tiny_model_keeps_the_contract(tiny_model_dir: Path, capsys):
    result = validate_model(tiny_model_dir)
    assert result.ok, result.problems
    assert any("re-measured clean accuracy" in note for note in result.notes)
    assert main(["validate-model", str(tiny_model_dir)]) == 0
    assert "keeps the contract" in capsys.readouterr().out


def test_an_exported_directory_is_readable_by_other_users(tiny_model_dir: Path):
    # mkdtemp, mkstemp and safetensors create owner-only entries; a service running as
    # another user (the container's) must still read everything export wrote
    mask = os.umask(0o022)
    os.umask(mask)
    entries = [tiny_model_dir, *tiny_model_dir.rglob("*")]
    assert any(e.suffix == ".safetensors" for e in entries)
    for entry in entries:
        wanted = (0o777 if entry.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(entry.stat().st_mode) == wanted, entry


@pytest.mark.slow
def test_a_wrong_recorded_accuracy_is_reported(model_dir_copy: Path, capsys):
    path = model_dir_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    recorded = manifest["metrics"]["clean_accuracy"]
    manifest["metrics"]["clean_accuracy"] = round(1 - recorded, 4) if recorded < 0.4 else 0.0
    path.write_text(json.dumps(manifest))
    assert main(["validate-model", str(model_dir_copy)]) == 1
    out = capsys.readouterr().out
    assert "problem: clean_accuracy is" in out and "has 1 problem(s)" in out


def test_a_corrupt_graph_is_reported(model_dir_copy: Path):
    with (model_dir_copy / "purifier.onnx").open("ab") as f:
        f.write(b"\0")
    result = validate_model(model_dir_copy)
    assert not result.ok and "purifier graph" in result.problems[0]


def test_a_graph_that_onnxruntime_cannot_load_is_reported(model_dir_copy: Path):
    path = model_dir_copy / "manifest.json"
    (model_dir_copy / "classifier.onnx").write_bytes(b"not a graph")
    manifest = json.loads(path.read_text())
    manifest["files"]["classifier"]["sha256"] = sha256_file(model_dir_copy / "classifier.onnx")
    path.write_text(json.dumps(manifest))
    result = validate_model(model_dir_copy)
    assert result.problems == [
        result.problems[0]
    ] and "cannot load the classifier graph" in " ".join(result.problems)


def test_not_a_directory_exits_2(tmp_path: Path, capsys):
    assert main(["validate-model", str(tmp_path / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_graph_wrappers_take_their_hooks_off(tiny_build: Path):
    from training.checkpoint import load_model

    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    x = torch.rand(2, 1, 28, 28)
    with ClassifierGraph(classifier) as c_graph, PurifierGraph(purifier) as p_graph:
        _, c_spikes = c_graph(x)
        *_, p_spikes = p_graph(x)
        assert (c_spikes > 0).all() and (p_spikes > 0).all()
        assert any(m._forward_hooks for m in classifier.modules())
    for model in (classifier, purifier):
        assert not any(m._forward_hooks for m in model.modules())


def test_packaging_lists_the_samples_it_is_given(tiny_build: Path, model_dir_copy: Path):
    """The manifest is built once with everything in place: graphs hashed, samples listed."""
    classifier = Checkpoint.load(tiny_build / "classifier.safetensors", "--classifier")
    purifier = Checkpoint.load(tiny_build / "purifier.safetensors", "--purifier")
    (model_dir_copy / "samples").mkdir()
    png = model_dir_copy / "samples" / "00-clean.png"
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(png)
    record = SampleRecord(
        id="00-clean", source="00", file="samples/00-clean.png", sha256=sha256_file(png),
        test_index=0, label="Ankle boot", class_index=9, variant="clean", threat_model=None,
        threat_model_note="the unmodified test image", eps=0.0, steps=0, attack=None,
    )  # fmt: skip
    parity = Parity(**dict.fromkeys(Parity.__dataclass_fields__, 0))
    manifest = build_manifest(
        model_dir_copy, name="packaged", version="2", classifier=classifier, purifier=purifier,
        info=matching_dataset(classifier, purifier, None), parity=parity, samples=[record],
        metrics={"eval_images": 1, "clean_accuracy": 1.0, "purified_clean_accuracy": 1.0},
    )  # fmt: skip
    write_manifest(model_dir_copy, manifest)
    checked, problems = validate_model_dir(model_dir_copy)
    assert problems == [] and [s.id for s in checked.samples] == ["00-clean"]
    bundled = checked.models.classifier
    assert bundled.checkpoint == "classifier.safetensors" and bundled.bundled
    assert bundled.checkpoint_sha256 == sha256_file(model_dir_copy / "classifier.safetensors")
    assert bundled.source_checkpoint_sha256 == sha256_file(classifier.path)


def test_the_bundled_weights_rebuild_the_served_graphs(tiny_model_dir: Path):
    """Anyone can attack exactly the served model: the weights in the directory give the
    logits and the purified image the ONNX graphs give, and the network fires."""
    from contract import load_manifest
    from training.checkpoint import load_model
    from training.export.parity import ort_session

    manifest = load_manifest(tiny_model_dir)
    classifier, _ = load_model(tiny_model_dir / manifest.models.classifier.checkpoint)
    purifier, _ = load_model(tiny_model_dir / manifest.models.purifier.checkpoint)
    classifier.eval(), purifier.eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    c_session = ort_session(tiny_model_dir / "classifier.onnx")
    p_session = ort_session(tiny_model_dir / "purifier.onnx")
    with torch.no_grad():
        purified = purifier(x)[0]
        logits = classifier(x)
    onnx_purified = p_session.run(["purified"], {"image": x.numpy()})[0]
    onnx_logits = c_session.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(onnx_purified - purified.numpy()).max() < 1e-4
    assert np.abs(onnx_logits - logits.numpy()).max() < 1e-3
    assert logits.std(0).max() > 0  # the output depends on the input
    assert not any(k.startswith("optim.") for k in _tensor_names(tiny_model_dir))


def _tensor_names(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for role in ("classifier", "purifier"):
        with safe_open(str(model_dir / f"{role}.safetensors"), "pt") as f:
            names += list(f.keys())
    return names


def test_missing_or_unbundled_weights_are_reported(model_dir_copy: Path):
    (model_dir_copy / "purifier.safetensors").unlink()
    path = model_dir_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["models"]["classifier"]["checkpoint"] = "runs/elsewhere/best.safetensors"
    path.write_text(json.dumps(manifest))
    _, problems = validate_model_dir(model_dir_copy)
    assert any("classifier weights are not in the directory" in p for p in problems), problems
    assert any("purifier weights" in p and "missing" in p for p in problems), problems


@pytest.mark.parametrize("flag", ["--classifier", "--purifier"])
def test_a_checkpoint_of_the_wrong_kind_is_refused(tiny_build: Path, flag: str):
    from training.errors import UsageError

    other = "purifier" if flag == "--classifier" else "classifier"
    with pytest.raises(UsageError, match=f"{flag} holds a"):
        Checkpoint.load(tiny_build / f"{other}.safetensors", flag)
