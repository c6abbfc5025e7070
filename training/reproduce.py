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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .presets import PRESETS
from .study_plan import (
    BUDGET_CORE_HOURS,
    EvalStage,
    Study,
    TrainStage,
    eval_prior_seconds,
    study_plan,
    train_prior_seconds,
)

RESULT_FILES = "*/*/*.json"  # eval/<stage>/<defence>/<threat model>/<setting>.json


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
    add("--status", "--list", dest="status", action="store_true",
        help="print each stage's state, core-seconds used and left; run nothing")  # fmt: skip


# --------------------------------------------------------------------------- configuration


def _resolve(value: Any, out: Path) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return str(out / value[1:-1])
    return value


def train_config(
    stage: TrainStage, study: Study, out: Path, args: argparse.Namespace, check: bool = True
):
    from .train import config_for

    settings = {k: _resolve(v, out) for k, v in stage.settings.items()}
    settings.update(name=stage.name, runs_dir=str(out), device=args.device)
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    if not args.progress:
        settings["progress"] = False
    return config_for(stage.command, study.preset, check=check, **settings)


def suite_config(stage: EvalStage, out: Path, args: argparse.Namespace):
    from .evaluate import SuiteConfig

    standard = {"none": "classifier", "purifier": "purifier", "adv-training": "adv_classifier"}
    base = stage.defences.get("none", ("clf-k3", None))[0]
    fields: dict[str, Any] = {"classifier": str(out / base)}
    extra: dict[str, tuple[str, str | None]] = {}
    for name, (classifier, purifier) in stage.defences.items():
        if name == "purifier" and classifier == base:
            fields["purifier"] = str(out / purifier)
        elif name == "adv-training" and purifier is None:
            fields["adv_classifier"] = str(out / classifier)
        elif name not in standard:
            extra[name] = (str(out / classifier), str(out / purifier) if purifier else None)
        elif name != "none":
            raise UsageError(f"stage {stage.name}: defence {name!r} does not fit its role")
    return SuiteConfig(
        **fields,
        extra_defences=extra,
        only_defences=list(stage.defences),
        sources=[str(out / s) for s in stage.sources],
        attacks=list(stage.attacks),
        eps=list(stage.eps),
        steps=list(stage.steps),
        threat_models=list(stage.threat_models),
        surrogates=["rect1", "sigmoid4", "ste"],
        n=stage.n,
        data_dir=args.data_dir,
        device="cuda" if args.device == "cuda" else "cpu",
        out=str(out / "eval" / stage.name),
        name=stage.name,
        alpha=None,  # 2.5 * eps / steps: reaches the edge of the ball at any epsilon
        sanity=stage.sanity,
    )


# --------------------------------------------------------------------------- state


@dataclass
class StageStatus:
    name: str
    group: int
    kind: str  # train | evaluate
    state: str  # done | partial | pending | cut
    progress: str  # "epoch k of n" / "settings i of j"
    spent_s: float
    left_s: float | None
    device: str = ""

    def line(self) -> str:
        left = "?" if self.left_s is None else f"{self.left_s:9.0f}"
        return (
            f"{self.group}  {self.kind:8s} {self.name:24s} {self.state:8s} {self.progress:18s}"
            f" {self.spent_s:9.0f} {left}  {self.device}"
        )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_status(stage: TrainStage, study: Study, out: Path, args) -> StageStatus:
    run_dir = out / stage.name
    config = train_config(stage, study, out, args, check=False)
    records = _read_jsonl(run_dir / "metrics.jsonl")
    epochs = _saved_epochs(run_dir) or config.epochs
    spent = sum(r.get("seconds", 0.0) for r in records)
    done = (run_dir / "summary.json").exists()
    if done:
        state, left = "done", 0.0
    elif records:
        state = "partial"
        left = spent / len(records) * (epochs - len(records))
    else:
        state = "partial" if (run_dir / "config.json").exists() else "pending"
        left = train_prior_seconds(stage, config)
    progress = f"epoch {len(records)} of {epochs or '?'}"
    device = json.loads((run_dir / "summary.json").read_text()).get("device", "") if done else ""
    return StageStatus(stage.name, stage.group, "train", state, progress, spent, left, device)


def _saved_epochs(run_dir: Path) -> int | None:
    path = run_dir / "config.json"
    return json.loads(path.read_text()).get("epochs") if path.exists() else None


def _needs_done(stage: TrainStage | EvalStage, out: Path) -> bool:
    return all((out / n / "summary.json").exists() for n in stage.needs)


def result_files(out: Path, stage: EvalStage) -> list[Path]:
    return sorted((out / "eval" / stage.name).glob(RESULT_FILES))


def eval_settings(stage: EvalStage, out: Path, args) -> list[dict[str, Any]]:
    """The stage's grid, planned without loading a model."""
    from .evaluate import plan_grid
    from .threat_models import Defence

    config = suite_config(stage, out, args)
    defences = [Defence(name, None, pur) for name, (_, pur) in stage.defences.items()]  # type: ignore[arg-type]
    return plan_grid(config, defences)


def eval_status(stage: EvalStage, out: Path, args) -> StageStatus:
    settings = eval_settings(stage, out, args)
    results = [json.loads(p.read_text()) for p in result_files(out, stage)]
    spent = sum(r.get("seconds", 0.0) for r in results)
    surrogates = 3
    priors = [eval_prior_seconds(s["attack"], s["threat"], stage.n, surrogates) for s in settings]
    done_keys = {
        (r["defence"], r["threat_model"], r["attack"], r["eps"], r.get("steps")) for r in results
    }
    left_priors = [
        p for s, p in zip(settings, priors, strict=True)
        if (s["defence"].name, s["threat"], s["attack"], s["eps"], s["steps"]) not in done_keys
    ]  # fmt: skip
    done_prior = sum(priors) - sum(left_priors)
    scale = spent / done_prior if done_prior > 0 and spent > 0 else 1.0
    n_done = len(settings) - len(left_priors)
    state = "done" if not left_priors else ("partial" if n_done else "pending")
    devices = sorted({r.get("device", "") for r in results} - {""})
    return StageStatus(
        stage.name, stage.group, "evaluate", state, f"settings {n_done} of {len(settings)}",
        spent, sum(left_priors) * scale, ",".join(devices),
    )  # fmt: skip


def study_status(study: Study, out: Path, args, budget_hours: float) -> list[StageStatus]:
    """Every stage's status; stages past the budget (cumulative, in plan order) are cut."""
    rows, total = [], 0.0
    for stage in study.stages:
        if isinstance(stage, TrainStage):
            row = train_status(stage, study, out, args)
        else:
            row = eval_status(stage, out, args)
        total += row.spent_s + (row.left_s or 0.0)
        if row.state != "done" and total > budget_hours * 3600:
            row.state = "cut"
        rows.append(row)
    return rows


def print_status(study: Study, out: Path, args) -> None:
    rows = study_status(study, out, args, args.budget_hours)
    print(f"study {study.preset} in {out}  (budget {args.budget_hours:g} core-hours)")
    print(f"{'g':3s}{'kind':9s}{'stage':25s}{'state':9s}{'progress':19s}{'spent s':>9s}"
          f" {'left s':>9s}  device")  # fmt: skip
    for row in rows:
        print(row.line())
    spent = sum(r.spent_s for r in rows)
    left = sum(r.left_s or 0.0 for r in rows if r.state != "cut")
    print(f"total: {spent / 3600:.2f} core-hours spent, about {left / 3600:.2f} left "
          f"(cut stages excluded)")  # fmt: skip
    for name, reason in study.cut:
        print(f"cut from the plan: {name}: {reason}")


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
    from .train import train

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
    from .evaluate import run_suite

    def on_result(path: Path, result: dict[str, Any]) -> None:
        commit(
            f"Study {study.preset}: {stage.name} {result['defence']}/{result['threat_model']}/"
            f"{result['attack']} robust {result['robust_accuracy']:.1f}%"
        )

    report = run_suite(
        suite_config(stage, out, args),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        on_result=on_result,
    )
    if report.failed:
        print(f"{stage.name}: {report.failed} sanity check(s) FAILED", file=sys.stderr)
    write_results(study, out, args)
    commit(f"Study {study.preset}: {stage.name} report")


def _device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return "cpu"


def write_results(study: Study, out: Path, args) -> Path:
    """``results.json``: the status of every stage, each finished training stage's summary
    and every evaluation result (compact), for the results page."""
    training, evaluation = {}, []
    for stage in study.stages:
        if isinstance(stage, TrainStage):
            path = out / stage.name / "summary.json"
            if path.exists():
                summary = json.loads(path.read_text())
                training[stage.name] = {
                    "command": stage.command,
                    "train_seconds": summary.get("train_seconds"),
                    "best_score": summary.get("best_score"),
                    "final": summary.get("final"),
                    "device": summary.get("device", "cpu"),
                }
            continue
        for path in result_files(out, stage):
            r = json.loads(path.read_text())
            keep = ("defence", "threat_model", "attack", "eps", "steps", "n", "purpose",
                    "clean_accuracy", "clean_ci95", "robust_accuracy", "robust_ci95",
                    "seconds", "device")  # fmt: skip
            evaluation.append({"stage": stage.name, **{k: r.get(k) for k in keep}})
    rows = study_status(study, out, args, args.budget_hours)
    payload = {
        "preset": study.preset,
        "stages": [row.__dict__ for row in rows],
        "cut_from_plan": [{"row": n, "reason": r} for n, r in study.cut],
        "training": training,
        "evaluation": evaluation,
    }
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"studies/{args.preset}")
    study = study_plan(args.preset, args.headline_n, args.other_n)
    names = [s.name for s in study.stages]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise UsageError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
        study = replace(study, stages=tuple(s for s in study.stages if s.name in args.only))
    if args.status:
        print_status(study, out, args)
        return 0
    run_study(study, out, args)
    return 0


def run_study(study: Study, out: Path, args: argparse.Namespace) -> None:
    """Runs every stage that is not done, cut, or waiting for an unfinished one; each
    resumes where the state in ``out`` says it stopped."""
    out.mkdir(parents=True, exist_ok=True)
    commit = Committer(out, args.commit)
    rows = study_status(study, out, args, args.budget_hours)
    for row, stage in zip(rows, study.stages, strict=True):
        if row.state in ("done", "cut"):
            if row.state == "cut":
                print(f"cut (over the budget): {stage.name}", file=sys.stderr)
            continue
        if not _needs_done(stage, out):
            print(f"skipping {stage.name}: not finished: {list(stage.needs)}", file=sys.stderr)
            continue
        if isinstance(stage, TrainStage):
            run_train_stage(stage, study, out, args, commit)
        else:
            run_eval_stage(stage, study, out, args, commit)
    write_results(study, out, args)
    commit(f"Study {study.preset}: results")
