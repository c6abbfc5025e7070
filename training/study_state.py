"""The state of a study directory, read from its files alone: each stage's configuration,
its status (done / partial / pending / cut, core-seconds used and left) and ``results.json``.

Everything here is derived from what the study wrote (run directories, result JSONs), so a
fresh clone reports exactly what the machine that ran the study would.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .study_plan import (
    DetectStage,
    EvalStage,
    Study,
    TrainStage,
    detect_prior_seconds,
    eval_prior_seconds,
    train_prior_seconds,
)

RESULT_FILES = "*/*/*.json"  # eval/<stage>/<defence>/<threat model>/<setting>.json


# --------------------------------------------------------------------------- configuration


def _resolve(value: Any, out: Path) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return str(out / value[1:-1])
    return value


def train_config(
    stage: TrainStage, study: Study, out: Path, args: argparse.Namespace, check: bool = True
):
    from .config import config_for

    settings = {k: _resolve(v, out) for k, v in stage.settings.items()}
    settings.update(name=stage.name, runs_dir=str(out), device=args.device)
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    if not args.progress:
        settings["progress"] = False
    return config_for(stage.command, study.preset, check=check, **settings)


def suite_config(stage: EvalStage, out: Path, args: argparse.Namespace):
    from .evaluation import SuiteConfig

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
        batch_size=stage.batch_size,
        data_dir=args.data_dir,
        device="cuda" if args.device == "cuda" else "cpu",
        out=str(out / "eval" / stage.name),
        name=stage.name,
        sanity=stage.sanity,
        compile=getattr(args, "compile", True),
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


def needs_done(stage: TrainStage | EvalStage, out: Path) -> bool:
    return all((out / n / "summary.json").exists() for n in stage.needs)


def result_files(out: Path, stage: EvalStage | DetectStage) -> list[Path]:
    return sorted((out / "eval" / stage.name).glob(RESULT_FILES))


def partial_files(out: Path, stage: EvalStage) -> list[Path]:
    """The batch tallies of the stage's unfinished settings (``evaluation.suite.partial_path``)."""
    return sorted((out / "eval" / stage.name).glob("*/*/*.partial"))


def eval_settings(stage: EvalStage, out: Path, args) -> list[dict[str, Any]]:
    """The stage's grid, planned without loading a model."""
    from .evaluation import plan_grid
    from .threat_models import Defence

    config = suite_config(stage, out, args)
    defences = [Defence(name, None, pur) for name, (_, pur) in stage.defences.items()]  # type: ignore[arg-type]
    return plan_grid(config, defences)


def eval_status(stage: EvalStage, out: Path, args) -> StageStatus:
    settings = eval_settings(stage, out, args)
    results = [json.loads(p.read_text()) for p in result_files(out, stage)]
    spent = sum(r.get("seconds", 0.0) for r in results)
    surrogates = 3
    priors = [
        eval_prior_seconds(s["attack"], s["threat"], stage.n, surrogates, stage.seconds_per_image)
        for s in settings
    ]
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
    progress = f"settings {n_done} of {len(settings)}"
    partials = [json.loads(p.read_text()) for p in partial_files(out, stage)]
    if partials and left_priors:  # batches of an unfinished setting, committed as they end
        spent += sum(r.get("seconds", 0.0) for r in partials)
        batches = sum(r["batches"] for r in partials)
        total = sum(-(-r["n"] // r["batch_size"]) for r in partials)
        progress += f", batch {batches} of {total} of the next"
        left_priors[0] *= 1 - batches / max(total, 1)
    state = "done" if not left_priors else ("partial" if n_done or partials else "pending")
    devices = sorted({r.get("device", "") for r in results} - {""})
    return StageStatus(
        stage.name, stage.group, "evaluate", state, progress,
        spent, sum(left_priors) * scale, ",".join(devices),
    )  # fmt: skip


def detect_config(stage: DetectStage, out: Path, args):
    from .detection.suite import study_config

    return study_config(
        out, stage.name, classifier=stage.classifier, purifier=stage.purifier, eps=stage.eps,
        n=stage.n, data_dir=args.data_dir, device="cuda" if args.device == "cuda" else "cpu",
        compile=getattr(args, "compile", True),
    )  # fmt: skip


def detect_status(stage: DetectStage, out: Path, args) -> StageStatus:
    from .detection.suite import ADAPTIVE, plan

    items = plan(detect_config(stage, out, args))
    total = len(items)
    results = [json.loads(p.read_text()) for p in result_files(out, stage)]
    spent = sum(r.get("seconds", 0.0) for r in results)
    done = min(len(results), total)
    state = "done" if done == total else ("partial" if done else "pending")
    prior = detect_prior_seconds(stage)
    left = prior if not done else 0.0
    finished = {(r.get("threat_model"), r.get("attack")) for r in results}
    for item in items if done else ():
        if (item["threat"], item["attack"]) in finished:
            continue
        # an adaptive setting costs what a finished adaptive one did (several lambdas)
        alike = [r.get("seconds", 0.0) for r in results
                 if (r.get("attack") in ADAPTIVE) == (item["attack"] in ADAPTIVE)]  # fmt: skip
        left += sum(alike) / len(alike) if alike else spent / done
    devices = ",".join(sorted({r.get("device", "") for r in results} - {""}))
    return StageStatus(stage.name, stage.group, "detect", state, f"settings {done} of {total}",
                       spent, left, devices)  # fmt: skip


def stage_status(stage, study: Study, out: Path, args) -> StageStatus:
    if isinstance(stage, TrainStage):
        return train_status(stage, study, out, args)
    if isinstance(stage, DetectStage):
        return detect_status(stage, out, args)
    return eval_status(stage, out, args)


def study_status(study: Study, out: Path, args, budget_hours: float) -> list[StageStatus]:
    """Every stage's status. What every stage has spent is gone from the budget; in plan
    order each unfinished stage then gets what is left: one whose estimate does not fit is
    cut and the later ones go on in order, so a dear stage does not take the cheaper ones
    after it down with it. A stage that needs a cut one is cut too and takes nothing from
    the budget (it could not run); an unfinished training stage whose every dependant is cut
    is cut too (its weights would serve no row)."""
    rows = [stage_status(stage, study, out, args) for stage in study.stages]
    state = {row.name: row for row in rows}
    left = budget_hours * 3600 - sum(row.spent_s for row in rows)
    for stage, row in zip(study.stages, rows, strict=True):  # plan order: needs come first
        if row.state == "done":
            continue
        need_cut = any(need in state and state[need].state == "cut" for need in stage.needs)
        if need_cut or (row.left_s or 0.0) > left:
            row.state = "cut"
        else:
            left -= row.left_s or 0.0
    for stage in reversed(study.stages):
        dependants = [s.name for s in study.stages if stage.name in s.needs]
        row = state[stage.name]
        if (isinstance(stage, TrainStage) and row.state not in ("done", "cut") and dependants
                and all(state[d].state == "cut" for d in dependants)):  # fmt: skip
            row.state = "cut"
    return rows


def print_status(study: Study, out: Path, args, whole: Study | None = None) -> None:
    """The rows of ``study``'s stages; budget cuts as in ``whole`` (default: ``study``)."""
    whole = whole or study
    shown = {s.name for s in study.stages}
    rows = [r for r in study_status(whole, out, args, args.budget_hours) if r.name in shown]
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
        if isinstance(stage, DetectStage):
            continue  # the results page reads eval/<stage>/detection.json itself
        for path in result_files(out, stage):
            r = json.loads(path.read_text())
            keep = ("defence", "threat_model", "attack", "eps", "steps", "n", "purpose",
                    "clean_accuracy", "clean_ci95", "robust_accuracy", "robust_ci95",
                    "seconds", "device")  # fmt: skip
            stages = {"fooled_by_stage": r["fooled_by_stage"]} if "fooled_by_stage" in r else {}
            evaluation.append({"stage": stage.name, **{k: r.get(k) for k in keep}, **stages})
    rows = study_status(study, out, args, args.budget_hours)
    payload = {
        "preset": study.preset,
        "budget_hours": args.budget_hours,  # the cuts below are against it
        "stages": [row.__dict__ for row in rows],
        "cut_from_plan": [{"row": n, "reason": r} for n, r in study.cut],
        "training": training,
        "evaluation": evaluation,
    }
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
