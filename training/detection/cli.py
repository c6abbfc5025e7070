"""``python -m training detect``: the purifier's noise level as a detector of attacks."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..evaluation.config import pixels
from ..snn import SURROGATES
from .suite import DetectionConfig, run_detection

DEFAULTS = {f.name: f.default for f in fields(DetectionConfig)}


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add("--classifier", required=True, help="classifier checkpoint (.safetensors or run dir)")
    add("--purifier", required=True, help="purifier checkpoint (.safetensors or run dir)")
    add("--out", required=True, help="output directory (one JSON per setting, detection.json)")
    add("--defence", default=DEFAULTS["defence"], help="the defence's name in the results")
    add("--attack", default=DEFAULTS["attack"], help="the attack (default apgd-ce)")
    add("--threat-models", nargs="+", default=list(DEFAULTS["threat_models"]),
        help="threat models of the attack (default: classifier-only end-to-end)")  # fmt: skip
    add("--eps", type=pixels, default=DEFAULTS["eps"], help="L-inf budget (default 0.1)")
    add("--steps", type=int, help="the attack's steps (default: its own, APGD-CE 100)")
    add("--no-adaptive", dest="adaptive", action="store_false",
        help="skip the adaptive attackers who keep the noise level (or the residual) "
             "low")  # fmt: skip
    add("--adaptive-steps", type=int, default=DEFAULTS["adaptive_steps"],
        help="PGD steps of the adaptive attacker (default 100)")  # fmt: skip
    add("--lambdas", nargs="+", type=float, default=list(DEFAULTS["lambdas"]),
        help="weights of the score in the adaptive loss CE - lambda * score")  # fmt: skip
    add("--surrogate-gradients", nargs="+", dest="surrogates", metavar="NAME",
        default=list(DEFAULTS["surrogates"]),
        help=f"per-sample worst case over these (choose from {sorted(SURROGATES)})")  # fmt: skip
    add("--fpr", type=pixels, default=DEFAULTS["fpr"],
        help="false-positive rate of the threshold on clean images (default 0.05)")  # fmt: skip
    add("-n", type=int, default=DEFAULTS["n"], help="test images (random subset; default 500)")
    add("--dataset", help="dataset, when the checkpoint does not record it")
    add("--data-dir", help="dataset directory")
    add("--seed", type=int, default=0, help="seed of the image subset and of the attacks")
    add("--batch-size", type=int, default=DEFAULTS["batch_size"])
    add("--device", default="cpu")
    add("--force", action="store_true", help="recompute settings whose result file exists")
    add("--compile", action="store_true",
        help="attack through the torch.compile neuron kernels (faster after a compile of "
        "about half a minute per surrogate)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    config = DetectionConfig(**{f.name: getattr(args, f.name) for f in fields(DetectionConfig)})
    summary = run_detection(config, log=lambda line: print(line, flush=True))
    for row in summary["results"]:
        mean = row["detection"]["mean"]
        print(f"{row['threat_model']}/{row['attack']}: robust {row['robust_accuracy']:.1f}%, "
              f"mean noise level AUC {mean['auc_fooled']} (fooled), TPR at "
              f"{100 * config.fpr:g}% FPR {mean['tpr_fooled']['percent']}")  # fmt: skip
        if "adaptive" in row:
            passed = row["adaptive"]["fooled_and_passed"]
            detector = row["adaptive"].get("detector", "mean")
            print(
                f"  adaptive ({detector}): {passed['k']} of {passed['n']} fool the pipeline "
                "undetected"
            )
    print(f"wrote {config.out}/detection.json")
    return 0
