"""``python -m training reproduce --preset P --out runs/repro``: the paper's whole study.

Stages run in order and each is resumable: a finished stage (``summary.json`` in its run
directory, or a result JSON per evaluation setting) is skipped, an interrupted training run
continues from its last epoch. Kill it at any point and run the same command again.

1. classifiers: SENet18-SNN with MLF K = 3 (the defended model), K = 1 and K = 2 (Table 1),
   K = 3 with online label smoothing, a PGD adversarially trained K = 3 (the baseline), and
   independently trained ResNet20-SNN and WRN-16-8-SNN transfer sources (Table 3);
2. the purifier, trained by Algorithm 1 against the K = 3 classifier;
3. evaluations (``training.evaluate.run_suite``) for Tables 1-4, Figure 4 and Figure 5;
4. ``results.json``: every figure the results page quotes, gathered from the stages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .presets import PRESETS, get_preset


@dataclass(frozen=True)
class TrainStage:
    name: str
    command: str
    flags: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalStage:
    name: str
    classifier: str
    purifier: str | None = None
    adv_classifier: str | None = None
    ols_classifier: str | None = None
    sources: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("pgd",)
    eps: tuple[float, ...] = ()
    steps: tuple[int, ...] = (7,)
    threat_models: tuple[str, ...] = ("classifier-only",)
    n: int = 500
    sanity: bool = True


@dataclass(frozen=True)
class Study:
    train: tuple[TrainStage, ...]
    evaluate: tuple[EvalStage, ...]
    headline_n: int = 1000
    other_n: int = 500
    extra: dict[str, Any] = field(default_factory=dict)


WHITE_BOX = ("classifier-only", "end-to-end", "bpda")


def study_plan(preset_name: str, headline_n: int = 1000, other_n: int = 500) -> Study:
    preset = get_preset(preset_name)
    eps = preset.eval_eps
    surrogates = preset.surrogates
    train = (
        TrainStage("clf-k3", "train-classifier"),
        TrainStage("purifier", "train-purifier", ("--classifier", "{clf-k3}"), ("clf-k3",)),
        TrainStage("clf-k3-adv", "adv-train"),
        TrainStage("clf-k3-ols", "train-classifier", ("--ols",)),
        TrainStage("clf-k1", "train-classifier", ("--thresholds", "0.6")),
        TrainStage("clf-k2", "train-classifier", ("--thresholds", "0.6,1.6")),
        TrainStage("src-resnet20", "train-classifier", surrogates["resnet20_snn"]),
        TrainStage("src-wrn16-8", "train-classifier", surrogates["wrn16_8_snn"]),
    )
    defended = dict(
        classifier="clf-k3", purifier="purifier", adv_classifier="clf-k3-adv",
        ols_classifier="clf-k3-ols",
    )  # fmt: skip
    evaluate = (
        # headline rows: PGD and AutoAttack in every white-box threat model, >= 1000 images
        EvalStage("headline", **defended, attacks=("pgd", "autoattack"), eps=(eps,),
                  threat_models=WHITE_BOX, n=headline_n),
        # Table 2: the paper's attack list at the dataset's standard epsilon
        EvalStage("table2", **defended,
                  attacks=("gaussian", "fgsm", "ifgsm", "mifgsm", "cw", "apgd-ce", "bpda-eot"),
                  eps=(eps,), threat_models=WHITE_BOX, n=other_n),
        # Table 1: MLF ablation, no purifier, at the paper's MNIST epsilon 0.2 (and eps)
        *(
            EvalStage(f"table1-{k}", classifier=f"clf-{k}", attacks=("fgsm", "pgd"),
                      eps=(eps, 0.2), n=other_n, sanity=False)
            for k in ("k1", "k2", "k3")
        ),
        # Table 3: transfer from independently trained surrogates
        EvalStage("table3", classifier="clf-k3", purifier="purifier",
                  ols_classifier="clf-k3-ols", sources=("src-resnet20", "src-wrn16-8"),
                  attacks=("fgsm", "pgd"), eps=(eps,), steps=(5, 10, 20),
                  threat_models=("transfer",), n=other_n),
        # the purifier reused unchanged in front of another classifier
        EvalStage("purifier-on-resnet20", classifier="src-resnet20", purifier="purifier",
                  attacks=("fgsm", "pgd"), eps=(eps,), threat_models=WHITE_BOX, n=other_n),
        # Figure 5: PGD steps and epsilon sweeps
        EvalStage("figure5-steps", **defended, attacks=("pgd",), eps=(eps,),
                  steps=(5, 10, 20, 50), threat_models=("classifier-only", "end-to-end"),
                  n=other_n),
        EvalStage("figure5-eps", **defended, attacks=("pgd",),
                  eps=tuple(round(eps * f, 4) for f in (0.25, 0.5, 1.0, 1.5, 2.0)),
                  threat_models=("classifier-only", "end-to-end"), n=other_n),
    )  # fmt: skip
    return Study(train, evaluate, headline_n, other_n)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add("--preset", required=True, choices=sorted(PRESETS))
    add("--out", default="runs/repro", help="directory of the study's runs and results")
    add("--data-dir", help="dataset directory (default: the dataset's own)")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add("--only", nargs="+", metavar="STAGE", help="run only these stages (by name)")
    add("--headline-n", type=int, default=1000, help="test images of the headline rows")
    add("--n", type=int, default=500, dest="other_n", help="test images of the other rows")
    add("--no-progress", dest="progress", action="store_false")
    add("--list", action="store_true", help="print the stages and their state, run nothing")


def _train_args(stage: TrainStage, args: argparse.Namespace, out: Path) -> list[str]:
    flags = [f.format(**{s: str(out / s) for s in stage.needs}) for f in stage.flags]
    argv = [stage.command, "--preset", args.preset, "--runs-dir", str(out), "--name", stage.name,
            "--device", args.device, *flags]  # fmt: skip
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if not args.progress:
        argv.append("--no-progress")
    return argv


def _train_state(run_dir: Path) -> str:
    if (run_dir / "summary.json").exists():
        return "done"
    if (run_dir / "config.json").exists():
        return "started"
    return "pending"


def run_train_stage(stage: TrainStage, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from . import train as train_module

    run_dir = out / stage.name
    state = _train_state(run_dir)
    if state == "done":
        return json.loads((run_dir / "summary.json").read_text())
    parser = argparse.ArgumentParser()
    train_module.configure(parser, stage.command)
    parsed = parser.parse_args(_train_args(stage, args, out)[1:])
    parsed.command = stage.command
    config = train_module.config_from_args(parsed)
    return train_module.train(config, resume=state == "started")


def run_eval_stage(stage: EvalStage, args: argparse.Namespace, out: Path):
    from .evaluate import SuiteConfig, run_suite

    def path(name: str | None) -> str | None:
        return str(out / name) if name else None

    config = SuiteConfig(
        classifier=path(stage.classifier),
        purifier=path(stage.purifier),
        adv_classifier=path(stage.adv_classifier),
        ols_classifier=path(stage.ols_classifier),
        sources=[str(out / s) for s in stage.sources],
        attacks=list(stage.attacks),
        eps=list(stage.eps),
        steps=list(stage.steps),
        threat_models=list(stage.threat_models),
        n=stage.n,
        data_dir=args.data_dir,
        device="cuda" if args.device == "cuda" else "cpu",
        out=str(out / "eval" / stage.name),
        name=stage.name,
        alpha=None,  # 2.5 * eps / steps: reaches the edge of the ball at any epsilon
        sanity=stage.sanity,
    )
    return run_suite(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    study = study_plan(args.preset, args.headline_n, args.other_n)
    study = replace(
        study,
        evaluate=tuple(
            replace(s, n=args.headline_n if s.name == "headline" else min(s.n, args.other_n))
            for s in study.evaluate
        ),
    )
    names = [s.name for s in study.train] + [s.name for s in study.evaluate]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise UsageError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
    if args.list:
        for s in study.train:
            print(f"train     {s.name:24s} {_train_state(out / s.name)}")
        for s in study.evaluate:
            done = len(list((out / "eval" / s.name).glob("results/*.json")))
            print(f"evaluate  {s.name:24s} {done} result files")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    timings = _load_timings(out)
    for stage in study.train:
        if args.only and stage.name not in args.only:
            continue
        t0 = time.time()
        summary = run_train_stage(stage, args, out)
        timings.setdefault(stage.name, {})["train_seconds"] = summary.get("train_seconds")
        timings[stage.name]["wall_seconds_last_call"] = round(time.time() - t0, 1)
        _save_timings(out, timings)
    for stage in study.evaluate:
        if args.only and stage.name not in args.only:
            continue
        missing = [
            n
            for n in (stage.classifier, stage.purifier, stage.adv_classifier, stage.ols_classifier)
            if n and _train_state(out / n) != "done"
        ]
        if missing:
            print(f"skipping {stage.name}: runs not finished: {missing}", file=sys.stderr)
            continue
        t0 = time.time()
        report = run_eval_stage(stage, args, out)
        timings.setdefault(f"eval/{stage.name}", {})["wall_seconds_last_call"] = round(
            time.time() - t0, 1
        )
        _save_timings(out, timings)
        if report.failed:
            print(f"{stage.name}: {report.failed} sanity check(s) FAILED", file=sys.stderr)
    return 0


def _load_timings(out: Path) -> dict[str, Any]:
    path = out / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_timings(out: Path, timings: dict[str, Any]) -> None:
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
