"""The study survives any machine: state committed to git as it goes, continued from a
fresh clone after interruptions mid-epoch and mid-evaluation, with the same result as an
uninterrupted run."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_data import make_tiny_dataset

from training import reproduce
from training import trainers as train_module
from training.__main__ import main
from training.evaluation import engine as evaluate_module
from training.presets import PRESETS, Preset
from training.study_plan import EvalStage, Study, TrainStage

OUT = Path("studies/tiny")


class Interrupted(Exception):
    """Stands in for a machine that goes away."""


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    common = dict(width=4, batch_size=32, compile=False, progress=False, augment=False)
    monkeypatch.setitem(
        PRESETS,
        "tiny-study",
        Preset(
            name="tiny-study",
            description="a study small enough for a test",
            dataset="fashion-mnist",
            eval_eps=0.1,
            classifier=dict(**common, epochs=3, lr=0.05, milestones=(), val_images=32, seed=3),
            purifier=dict(**common, epochs=2, lr=1e-3, subset=96, val_images=32, attack="fgsm",
                          attack_eps=0.2, attack_eps_min=0.0, clean_fraction=0.25,
                          charbonnier_epochs=1),
        ),
    )  # fmt: skip
    for name, value in (("NAME", "study"), ("EMAIL", "study@example.invalid")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)


TINY = Study(
    "tiny-study",
    (
        TrainStage("clf-k3", 1, "train-classifier"),
        TrainStage("purifier", 2, "train-purifier", {"classifier": "{clf-k3}"}, ("clf-k3",)),
        EvalStage(
            "headline",
            3,
            {"none": ("clf-k3", None), "purifier": ("clf-k3", "purifier")},
            ("fgsm", "pgd"),
            ("classifier-only", "end-to-end"),
            (0.1,),
            steps=(3,),
            n=16,
        ),
    ),
)


def study_args(data_dir: Path, commit: bool) -> argparse.Namespace:
    return argparse.Namespace(
        device="cpu",
        data_dir=str(data_dir),
        progress=False,
        budget_hours=1.0,
        commit=commit,
        compile=False,
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def interrupt_after(monkeypatch, target, attribute: str, calls: int) -> None:
    """Makes ``target.attribute`` raise ``Interrupted`` on its ``calls``-th call."""
    original = getattr(target, attribute)
    seen = {"n": 0}

    def wrapper(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, wrapper)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def outcome(root: Path) -> dict:
    study = root / OUT
    results = json.loads((study / "results.json").read_text())
    rows = sorted(
        (r["defence"], r["threat_model"], r["attack"], r["clean_accuracy"], r["robust_accuracy"])
        for r in results["evaluation"]
    )
    logs = {
        name: [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (study / name / "metrics.jsonl").read_text().splitlines()
        ]
        for name in ("clf-k3", "purifier")
    }
    return {
        "rows": rows,
        "logs": logs,
        "weights": {n: weights(study / n / "best.safetensors") for n in ("clf-k3", "purifier")},
    }


@pytest.mark.slow
def test_study_continues_from_a_fresh_clone(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "data")

    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.chdir(reference)
    reproduce.run_study(TINY, OUT, study_args(data, commit=False))
    expected = outcome(reference)

    # the first machine: killed in the middle of the classifier's second epoch (9 batches per
    # epoch), after epoch 1 was committed
    first = tmp_path / "first"
    first.mkdir()
    git(first, "init", "-q")
    monkeypatch.chdir(first)
    with monkeypatch.context() as m:
        interrupt_after(m, train_module.ClassifierTrainer, "train_step", 13)
        with pytest.raises(Interrupted):
            reproduce.run_study(TINY, OUT, study_args(data, commit=True))
    assert "clf-k3 epoch 1/3" in git(first, "log", "--format=%s")
    # nothing of the unfinished epoch reached the disk, so nothing is left uncommitted
    assert git(first, "status", "--porcelain", "--untracked-files=all", "--", str(OUT)) == ""

    # a second machine: only what was committed; killed after the first evaluation setting
    second = tmp_path / "second"
    git(tmp_path, "clone", "-q", str(first), str(second))
    assert not (second / OUT / "clf-k3" / "summary.json").exists()
    monkeypatch.chdir(second)
    with monkeypatch.context() as m:
        interrupt_after(m, evaluate_module, "evaluate", 2)
        with pytest.raises(Interrupted):
            reproduce.run_study(TINY, OUT, study_args(data, commit=True))
    results = sorted((second / OUT / "eval" / "headline").glob(reproduce.RESULT_FILES))
    assert len(results) == 1
    assert not (second / OUT / "clf-k3" / "latest.safetensors").exists()  # done: best only

    # a third machine finishes the study
    third = tmp_path / "third"
    git(tmp_path, "clone", "-q", str(second), str(third))
    monkeypatch.chdir(third)
    status = reproduce.study_status(TINY, OUT, study_args(data, commit=True), 1.0)
    assert [(s.name, s.state) for s in status] == [
        ("clf-k3", "done"), ("purifier", "done"), ("headline", "partial")
    ]  # fmt: skip
    assert status[2].progress.startswith("settings 1 of ")
    reproduce.run_study(TINY, OUT, study_args(data, commit=True))
    got = outcome(third)

    assert got["rows"] == expected["rows"]
    assert got["logs"] == expected["logs"]
    for name, tensors in expected["weights"].items():
        assert tensors.keys() == got["weights"][name].keys()
        assert all(torch.equal(tensors[k], got["weights"][name][k]) for k in tensors), name
    # not a vacuous equality: training moved the loss and the attacks found something
    clf_log = expected["logs"]["clf-k3"]
    assert clf_log[0]["train_loss"] != clf_log[-1]["train_loss"]
    pgd_none = [r for r in expected["rows"] if r[0] == "none" and r[2] == "pgd"]
    assert pgd_none and pgd_none[0][4] < pgd_none[0][3]
    assert git(third, "status", "--porcelain", "--", str(OUT)) == ""


def test_status_lists_every_stage_without_running_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--preset", "cpu-fashion-mnist", "--status"]) == 0
    out = capsys.readouterr().out
    for stage in ("clf-k3", "purifier", "purifier-paper", "headline-e2e", "clf-k3-adv"):
        assert f" {stage} " in out
    assert "pending" in out and "core-hours" in out
    assert not (tmp_path / "studies").exists()


def test_unknown_stage_is_a_usage_error(capsys):
    assert main(["reproduce", "--preset", "cpu-fashion-mnist", "--only", "nope", "--status"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_only_runs_its_stages_but_results_cover_the_whole_study(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    reproduce.run_study(TINY, OUT, study_args(data, commit=False), only=["clf-k3"])
    assert (OUT / "clf-k3" / "summary.json").exists()
    assert not (OUT / "purifier").exists() and not (OUT / "eval").exists()
    results = json.loads((OUT / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["clf-k3", "purifier", "headline"]
    assert list(results["training"]) == ["clf-k3"]


def test_status_of_some_stages_keeps_the_whole_plans_budget(tmp_path, monkeypatch, capsys):
    # a stage the whole study's budget cuts must stay cut when asked for alone
    monkeypatch.chdir(tmp_path)
    study = ["reproduce", "--preset", "cpu-fashion-mnist", "--budget-hours", "10", "--status"]
    assert main(study) == 0
    cut = [line.split()[2] for line in capsys.readouterr().out.splitlines() if " cut " in line]
    assert cut and cut[0] != "clf-k3"
    assert main([*study, "--only", cut[0]]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if f" {cut[0]} " in line]
    assert len(rows) == 1 and " cut " in rows[0]


def test_a_stage_over_the_budget_is_cut_and_the_cheaper_ones_after_it_still_run(monkeypatch):
    # src trains for 100 s and fits the budget, but the only row that needs it does not;
    # clf stays: a row that fits needs it
    from training import study_state

    study = Study(
        "tiny-study",
        (
            TrainStage("clf", 1, "train-classifier"),
            TrainStage("src", 2, "train-classifier"),
            EvalStage("sweep", 2, {"none": ("clf", None)}, ("pgd",)),
            EvalStage("transfer", 2, {"none": ("clf", None)}, ("pgd",), sources=("src",)),
            EvalStage("late", 3, {"none": ("clf", None)}, ("fgsm",)),
        ),
    )
    cost = {"clf": 100.0, "src": 100.0, "sweep": 100.0, "transfer": 5000.0, "late": 3000.0}

    spent: dict[str, float] = {}

    def status(stage, study, out, args):
        return study_state.StageStatus(stage.name, stage.group, "x", "pending", "",
                                       spent.get(stage.name, 0.0), cost[stage.name])  # fmt: skip

    monkeypatch.setattr(study_state, "stage_status", status)
    rows = study_state.study_status(study, OUT, None, budget_hours=1.0)
    # the dear transfer row is cut; the later row still gets what is left (300 + 3000 s)
    assert {r.name: r.state for r in rows} == {
        "clf": "pending", "src": "cut", "sweep": "pending", "transfer": "cut", "late": "pending",
    }  # fmt: skip
    rows = study_state.study_status(study, OUT, None, budget_hours=2.5)
    assert {r.name: r.state for r in rows} == dict.fromkeys(cost, "pending")
    # what any stage spent, a cut one included, is gone: now the later row does not fit
    spent["transfer"] = 1000.0
    rows = study_state.study_status(study, OUT, None, budget_hours=1.0)
    assert [r.name for r in rows if r.state == "cut"] == ["src", "transfer", "late"]


def test_a_stage_that_needs_a_cut_one_is_cut_and_leaves_its_time_to_the_later_ones(monkeypatch):
    # adapt (a training run) does not fit; its evaluation would, but cannot run without it,
    # so it is cut too and the later row gets the time it would have reserved
    from training import study_state

    study = Study(
        "tiny-study",
        (
            TrainStage("clf", 1, "train-classifier"),
            TrainStage("adapt", 2, "train-classifier"),
            EvalStage("adapt-eval", 2, {"adaptive": ("clf", "adapt")}, ("pgd",)),
            EvalStage("late", 3, {"none": ("clf", None)}, ("fgsm",)),
        ),
    )
    cost = {"clf": 100.0, "adapt": 5000.0, "adapt-eval": 1000.0, "late": 3000.0}

    def status(stage, study, out, args):
        return study_state.StageStatus(stage.name, stage.group, "x", "pending", "", 0.0,
                                       cost[stage.name])  # fmt: skip

    monkeypatch.setattr(study_state, "stage_status", status)
    rows = study_state.study_status(study, OUT, None, budget_hours=1.0)
    assert {r.name: r.state for r in rows} == {
        "clf": "pending", "adapt": "cut", "adapt-eval": "cut", "late": "pending",
    }  # fmt: skip
    rows = study_state.study_status(study, OUT, None, budget_hours=2.6)
    assert {r.name: r.state for r in rows} == dict.fromkeys(cost, "pending")


def test_a_stage_sets_its_batch_size_and_its_cost_per_image(tmp_path):
    # AutoAttack on the robust model: small batches (each is committed) and its own prior
    from training.study_plan import AUTOATTACK_ROBUST_SECONDS_PER_IMAGE, study_plan
    from training.study_state import eval_status, suite_config

    study = study_plan("cpu-fashion-mnist", 1000, 500)
    args = study_args(tmp_path / "data", commit=False)
    robust, plain = study.stage("headline-adv-aa"), study.stage("headline-aa")
    assert suite_config(robust, tmp_path, args).batch_size == 20
    assert suite_config(plain, tmp_path, args).batch_size == 100
    row = eval_status(robust, tmp_path, args)
    assert row.left_s == pytest.approx(AUTOATTACK_ROBUST_SECONDS_PER_IMAGE * robust.n)
    assert eval_status(plain, tmp_path, args).left_s < row.left_s / 5
