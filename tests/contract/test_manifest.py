"""The model-directory contract on its own: the bundled manifest, every kind of bad
manifest, sample records set aside, writing and reading back, and the directory check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract import (
    ContractError,
    Manifest,
    check_graph_io,
    load_manifest,
    read_manifest_text,
    validate_model_dir,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "fashion-mnist"


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads((BUNDLED / "manifest.json").read_text())


def parse(document: dict) -> Manifest:
    return read_manifest_text(json.dumps(document))


def test_bundled_manifest_loads_and_writes_back_unchanged(raw: dict):
    manifest = load_manifest(BUNDLED)
    assert manifest.input_shape == (1, 28, 28) and manifest.num_classes == 10
    assert manifest.graph("classifier").outputs == ["logits", "spikes"]
    assert manifest.models.classifier.architecture == "senet18_snn"
    assert manifest.metrics.clean_accuracy == raw["metrics"]["clean_accuracy"]
    assert len(manifest.samples) == len(raw["samples"]) > 0 and not manifest.rejected_samples
    assert manifest.to_json() == raw


def test_bundled_model_directory_passes_the_check():
    manifest, problems = validate_model_dir(BUNDLED)
    assert manifest is not None and problems == []
    # the served model can be attacked white-box: both networks' weights are in the bundle
    assert manifest.models.classifier.checkpoint == "classifier.safetensors"
    assert manifest.models.purifier.checkpoint == "purifier.safetensors"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("class_names"), "class_names: Field required"),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
        (lambda m: m["input"].update(channels=2), "input channels 2: expected 1 or 3"),
        (lambda m: m["input"].update(value_range=[0, 255]), "is not [0, 1]"),
        (lambda m: m["files"]["purifier"].update(outputs=["purified"]), "the contract is"),
        (lambda m: m["files"]["classifier"].update(path="../x.onnx"), "not a file name"),
        (lambda m: m["files"]["classifier"].update(sha256="abc"), "files.classifier.sha256"),
        (lambda m: m.update(class_names=[]), "class_names"),
    ],
)
def test_bad_manifests_name_their_problem(raw: dict, edit, message: str):
    document = json.loads(json.dumps(raw))
    edit(document)
    with pytest.raises(ContractError, match="manifest") as caught:
        parse(document)
    assert message in str(caught.value)


def test_not_json_and_not_an_object():
    with pytest.raises(ContractError, match="unreadable manifest"):
        read_manifest_text("{not json")
    with pytest.raises(ContractError, match="not a JSON object"):
        read_manifest_text("[1, 2]")


def test_missing_manifest(tmp_path: Path):
    with pytest.raises(ContractError, match="no manifest"):
        load_manifest(tmp_path)


def test_malformed_sample_records_are_set_aside(raw: dict):
    document = json.loads(json.dumps(raw))
    records = document["samples"]
    records[0]["file"] = "manifest.json"
    records[1]["id"] = "../manifest"
    records[2]["sha256"] = 5
    records.append(dict(records[3]))
    manifest = parse(document)
    kept = {s.id for s in manifest.samples}
    assert len(manifest.samples) == len(raw["samples"]) - 3
    assert raw["samples"][0]["id"] not in kept and "../manifest" not in kept
    assert len(manifest.rejected_samples) == 4
    assert any("listed twice" in r for r in manifest.rejected_samples)
    assert any("names file 'manifest.json'" in r for r in manifest.rejected_samples)


def test_unknown_fields_survive_a_round_trip(raw: dict, tmp_path: Path):
    document = json.loads(json.dumps(raw))
    document["from_a_newer_writer"] = {"kept": True}
    document["files"]["purifier"]["note"] = "also kept"
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    write_manifest(tmp_path, load_manifest(tmp_path))
    assert json.loads((tmp_path / "manifest.json").read_text()) == document
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no staging file left


def test_directory_check_finds_corrupt_files_and_missing_provenance(tmp_path: Path):
    model_dir = tmp_path / "model"
    shutil.copytree(BUNDLED, model_dir)
    (model_dir / "samples" / "00-pgd.png").write_bytes(b"edited")
    (model_dir / "samples" / "01-clean.png").unlink()
    document = json.loads((model_dir / "manifest.json").read_text())
    del document["export"]
    (model_dir / "manifest.json").write_text(json.dumps(document))
    _, problems = validate_model_dir(model_dir)
    problems = [p for p in problems if "weights are not in the directory" not in p]
    assert problems == [
        "manifest has no 'export' section",
        f"sample 00-pgd: {model_dir}/samples/00-pgd.png does not match its sha256",
        f"sample 01-clean: {model_dir}/samples/01-clean.png is missing",
    ]
    with (model_dir / "classifier.onnx").open("ab") as f:
        f.write(b"\0")
    _, problems = validate_model_dir(model_dir)
    assert any("classifier graph" in p and "is corrupt" in p for p in problems)


def test_graph_io_check():
    check_graph_io("purifier", ["image"], ["purified", "noise_level", "spikes"])
    with pytest.raises(ContractError, match=r"expected \['image'\] and \['logits', 'spikes'\]"):
        check_graph_io("classifier", ["image"], ["spikes", "logits"])


def test_the_contract_imports_neither_torch_nor_training():
    code = (
        "import sys, contract\n"
        "contract.load_manifest(sys.argv[1])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code, str(BUNDLED)], check=True, cwd=REPO)
