"""Files written before the training package was split (``tests/fixtures/v0``, made by the
code of that time) still load, resume and are reused: checkpoints, resumable training
state, run directories whose ``config.json`` lacks settings added since, and evaluation
result files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_model, read_meta
from training.config import config_for
from training.evaluation import SuiteConfig, run_suite
from training.snn import spike_count
from training.trainers import train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0"
FLAGS = dict(width=2, timesteps=2, batch_size=32, subset=64, val_images=32, progress=False,
             compile=False)  # fmt: skip


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the old run and result directories as the working directory (the files
    name each other by relative paths)."""
    shutil.copytree(FIXTURES, tmp_path / "old")
    monkeypatch.chdir(tmp_path / "old")
    return tmp_path / "old"


def test_old_checkpoints_load_and_fire(study: Path):
    x = torch.rand(2, 1, 28, 28)
    classifier, meta = load_model("runs/clf")
    assert meta["kind"] == "train-classifier" and meta["epoch"] == 1
    assert classifier(x).shape == (2, 10)
    purifier, meta = load_model("runs/purifier")
    purified, noise = purifier(x)
    assert purified.shape == noise.shape == x.shape
    assert (spike_count(classifier, x) > 0).all() and (spike_count(purifier, x) > 0).all()


@pytest.mark.parametrize(
    ("command", "name", "settings"),
    [
        ("train-classifier", "clf", {}),
        ("train-purifier", "purifier", {"classifier": "runs/clf"}),
    ],
)
@pytest.mark.slow
def test_old_runs_resume_where_they_stopped(study: Path, command: str, name: str, settings):
    """A run of 2 epochs interrupted after the first: its config.json as the old code
    wrote it (``epochs`` aside), which lacks settings added since."""
    path = study / "runs" / name / "config.json"
    saved = json.loads(path.read_text())
    assert "clean_fraction" not in saved and "attack_eps_min" not in saved
    path.write_text(json.dumps(saved | {"epochs": 2}, indent=2))
    config = config_for(command, name=name, runs_dir="runs", epochs=2, **FLAGS, **settings)
    summary = train(config, resume=True)
    log = [json.loads(line) for line in (study / "runs" / name / "metrics.jsonl").open()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert read_meta(study / "runs" / name / "latest.safetensors")["epoch"] == 2
    assert summary["final"]["epoch"] == 2


def test_an_old_result_file_is_reused(study: Path):
    results = study / "results"
    (results / "purifier" / "end-to-end").mkdir(parents=True)
    old = results / "pgd_steps7_eps0.03137_e9707675f83c.json"
    shutil.move(old, results / "purifier" / "end-to-end" / old.name)
    lines: list[str] = []
    config = SuiteConfig(
        classifier="runs/clf", purifier="runs/purifier", attacks=["fgsm", "pgd"],
        threat_models=["end-to-end"], surrogates=["rect1"], n=16, batch_size=16,
        out=str(results), sanity=False, step_size=2 / 255,  # the default of that time
    )  # fmt: skip
    report = run_suite(config, log=lines.append)
    reused = [line for line in lines if "reused" in line]
    assert reused == [
        "[4/4] purifier/end-to-end/pgd^7 eps=0.03137: robust 0.0% (reused "
        "pgd_steps7_eps0.03137_e9707675f83c.json)"
    ]
    assert len(report.results) == 4 and "| purifier |" in (results / "summary.md").read_text()
