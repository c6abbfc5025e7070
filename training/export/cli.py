"""The commands: ``export`` (checkpoints -> model directory) and ``validate-model``
(a model directory against the contract; exit 1 when it breaks it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import UsageError
from ..samples import DEFAULT_SAMPLES
from .package import export_model
from .validate import validate_model


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "validate-model":
        parser.add_argument("model_dir", metavar="DIR", help="the model directory to check")
        parser.add_argument("--data-dir", help="dataset directory (default: the dataset's own)")
    else:
        _configure_export(parser)


def run(args: argparse.Namespace) -> int:
    if args.command == "validate-model":
        return _run_validate(args)
    return _run_export(args)


def _run_validate(args: argparse.Namespace) -> int:
    if not Path(args.model_dir).is_dir():
        raise UsageError(f"{args.model_dir} is not a directory")
    result = validate_model(args.model_dir, data_dir=args.data_dir)
    for note in result.notes:
        print(f"note: {note}")
    for problem in result.problems:
        print(f"problem: {problem}")
    name = f"{result.manifest.name} v{result.manifest.version}" if result.manifest else "?"
    verdict = "keeps the contract" if result.ok else f"has {len(result.problems)} problem(s)"
    print(f"{args.model_dir} ({name}) {verdict}")
    return 0 if result.ok else 1


def _configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifier", required=True, help="classifier checkpoint or run dir")
    parser.add_argument("--purifier", required=True, help="purifier checkpoint or run dir")
    parser.add_argument("--out", required=True, help="model directory to write (models/<name>)")
    parser.add_argument("--name", help="model name (default: the --out directory's name)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    parser.add_argument("--dataset", help="dataset (default: the checkpoints' own)")
    parser.add_argument("--data-dir", help="dataset directory (default: the dataset's own)")
    parser.add_argument(
        "--eval-images", type=int, default=1000, help="test images for the accuracies"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--metrics-json", help="robust accuracies from the evaluation, stored in the manifest"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"test images stored with adversarial versions for the demo page (default "
        f"{DEFAULT_SAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--samples-eps",
        type=float,
        help="L-inf budget of the samples' attacks (default: the checkpoints' eval_eps)",
    )


def _run_export(args: argparse.Namespace) -> int:
    robust = None
    if args.metrics_json:
        try:
            robust = json.loads(Path(args.metrics_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--metrics-json: {exc}") from None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    with torch.no_grad():  # scoped: export runs in-process from tests and other commands
        manifest = export_model(
            args.classifier,
            args.purifier,
            args.out,
            name=args.name,
            version=args.version,
            dataset=args.dataset,
            data_dir=args.data_dir,
            eval_images=args.eval_images,
            batch_size=args.batch_size,
            robust_metrics=robust,
            force=args.force,
            samples=args.samples,
            samples_eps=args.samples_eps,
        )
    metrics, parity = manifest.metrics, manifest.export.parity
    print(
        f"exported {manifest.name} v{manifest.version} to {args.out}: "
        f"clean accuracy {metrics.clean_accuracy:.4f}, purified "
        f"{metrics.purified_clean_accuracy:.4f} on {metrics.eval_images} test images; "
        f"ORT vs PyTorch max |diff| logits {parity['logits_max_abs']:.2g}, "
        f"purified {parity['purified_max_abs']:.2g}; threshold flips on {parity['flipped']} "
        f"of {parity['images']} images"
    )
    return 0
