"""``python -m training reproduce --preset P``: the paper's whole study, durable and budgeted.

The study (``training.study_plan``) is a list of stages in value order. Its state lives in a
tracked directory, ``studies/<preset>/`` by default:

* a training stage is a run directory (``config.json``, ``metrics.jsonl``, ``summary.json``,
  ``best.safetensors``; while unfinished also ``latest.safetensors``, the resumable state
  rewritten at every epoch end, removed once the stage is done);
* an evaluation stage is ``eval/<stage>/``: one result JSON per setting, and the stage's report;
* ``results.json`` gathers every figure of the finished stages.

With ``--commit`` each finished epoch and each finished evaluation setting is committed to
git at once, so a clone on any machine continues where the last run stopped: run the same
command again. ``--status`` prints each stage (done / partial / pending), the core-seconds it
used and an estimate of what it has left. Stages whose prior cost does not fit in the
budget (``--budget-hours``, cumulative in plan order) are cut and listed as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .presets import PRESETS
from .study_plan import BUDGET_CORE_HOURS, DetectStage, EvalStage, Study, TrainStage, study_plan
from .study_state import (
    RESULT_FILES,
    detect_config,
    needs_done,
    print_status,
    study_status,
    suite_config,
    train_config,
    write_results,
)

__all__ = ["RESULT_FILES", "configure", "run", "run_study", "study_status", "write_results"]


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add("--preset", required=True, choices=sorted(PRESETS))
    add("--out", help="the study's directory (default: studies/<preset>, tracked by git)")
    add("--data-dir", help="dataset directory (default: the dataset's own)")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add("--only", nargs="+", metavar="STAGE", help="run only these stages (by name)")
    add("--headline-n", type=int, default=1000, help="test images of the headline row")
    add("--n", type=int, default=500, dest="other_n", help="test images of the other rows")
    add("--budget-hours", type=float, default=BUDGET_CORE_HOURS,
        help=f"core-hours of the whole study (default {BUDGET_CORE_HOURS:g}); later stages "
        "that do not fit are cut")  # fmt: skip
    add("--commit", action="store_true",
        help="git-commit the study directory after every epoch and evaluation setting")  # fmt: skip
    add("--no-progress", dest="progress", action="store_false")
    add("--no-compile", dest="compile", action="store_false",
        help="attack through the eager neuron kernels (default: the torch.compile ones, "
        "~1.8x faster on CPU after a compile of about half a minute per surrogate)")  # fmt: skip
    add("--status", "--list", dest="status", action="store_true",
        help="print each stage's state, core-seconds used and left; run nothing")  # fmt: skip


# --------------------------------------------------------------------------- running


class Committer:
    """``git add`` + ``git commit`` of the study directory; a failure (no repository, a busy
    index) is reported and retried a few times, never fatal to the study."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        path = str(self.out)
        for attempt in range(5):
            add = subprocess.run(["git", "add", "--", path], capture_output=True, text=True)
            if add.returncode == 0:
                staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", path])
                if staged.returncode == 0:
                    return  # nothing new
                commit = subprocess.run(
                    ["git", "commit", "-q", "-m", message, "--", path],
                    capture_output=True,
                    text=True,
                )
                if commit.returncode == 0:
                    return
                error = commit.stderr.strip()
            else:
                error = add.stderr.strip()
            time.sleep(1 + attempt)
        print(f"reproduce: could not commit {path}: {error}", file=sys.stderr)


def run_train_stage(stage: TrainStage, study: Study, out: Path, args, commit) -> None:
    from .trainers import train

    run_dir = out / stage.name
    if (run_dir / "summary.json").exists():
        return
    config = train_config(stage, study, out, args)

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        commit(f"Study {study.preset}: {stage.name} epoch {epoch}/{config.epochs}")

    summary = train(config, resume=(run_dir / "config.json").exists(), on_epoch=on_epoch)
    summary["device"] = _device_name(args.device)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "latest.safetensors").unlink(missing_ok=True)  # best.safetensors holds it
    write_results(study, out, args)
    commit(f"Study {study.preset}: {stage.name} done")


def run_eval_stage(stage: EvalStage, study: Study, out: Path, args, commit) -> None:
    from .evaluation import run_suite

    def on_result(path: Path, result: dict[str, Any]) -> None:
        commit(
            f"Study {study.preset}: {stage.name} {result['defence']}/{result['threat_model']}/"
            f"{result['attack']} robust {result['robust_accuracy']:.1f}%"
        )

    def on_batch(partial: Path, label: str, done: int, total: int) -> None:
        setting = label.split("] ", 1)[-1]
        commit(f"Study {study.preset}: {stage.name} {setting} batch {done}/{total}")

    report = run_suite(
        suite_config(stage, out, args),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        on_result=on_result,
        on_batch=on_batch,
    )
    if report.failed:
        print(f"{stage.name}: {report.failed} sanity check(s) FAILED", file=sys.stderr)
    write_results(study, out, args)
    commit(f"Study {study.preset}: {stage.name} report")


def run_detect_stage(stage: DetectStage, study: Study, out: Path, args, commit) -> None:
    from .detection.suite import run_detection

    def on_result(path: Path, result: dict[str, Any]) -> None:
        commit(f"Study {study.preset}: {stage.name} {result['threat_model']}/{result['attack']}")

    run_detection(
        detect_config(stage, out, args),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        on_result=on_result,
    )
    commit(f"Study {study.preset}: {stage.name} summary")


def _device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return "cpu"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"studies/{args.preset}")
    study = study_plan(args.preset, args.headline_n, args.other_n)
    names = [s.name for s in study.stages]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise UsageError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
    if args.status:
        shown = study
        if args.only:  # the whole plan's budget and order, these rows only
            shown = replace(study, stages=tuple(s for s in study.stages if s.name in args.only))
        print_status(shown, out, args, whole=study)
        return 0
    run_study(study, out, args, only=args.only)
    return 0


def run_study(
    study: Study, out: Path, args: argparse.Namespace, only: list[str] | None = None
) -> None:
    """Runs every stage that is not done, cut, or waiting for an unfinished one (of
    ``only``, when given); each resumes where the state in ``out`` says it stopped. The
    budget, the order and ``results.json`` are always the whole study's."""
    out.mkdir(parents=True, exist_ok=True)
    commit = Committer(out, args.commit)
    rows = study_status(study, out, args, args.budget_hours)
    for row, stage in zip(rows, study.stages, strict=True):
        if only and stage.name not in only:
            continue
        if row.state in ("done", "cut"):
            if row.state == "cut":
                reason = "over the budget, or a stage it needs is"
                print(f"cut ({reason}): {stage.name}", file=sys.stderr)
            continue
        if not needs_done(stage, out):
            print(f"skipping {stage.name}: not finished: {list(stage.needs)}", file=sys.stderr)
            continue
        if isinstance(stage, TrainStage):
            run_train_stage(stage, study, out, args, commit)
        elif isinstance(stage, DetectStage):
            run_detect_stage(stage, study, out, args, commit)
        else:
            run_eval_stage(stage, study, out, args, commit)
    write_results(study, out, args)
    commit(f"Study {study.preset}: results")
