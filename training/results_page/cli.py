"""``python -m training results-page``: render docs/results.md and its plots from a study."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .page import render_page


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add(
        "--study",
        default="studies/cpu-fashion-mnist",
        help="the study's directory, holding results.json (default studies/cpu-fashion-mnist)",
    )
    add("--out", default="docs/results.md", help="the Markdown page (default docs/results.md)")
    add("--plots", help="directory of the PNG plots (default: <out without .md>/, docs/results/)")
    add("--model-dir", default="models/fashion-mnist",
        help="the served model the study made (default models/fashion-mnist)")  # fmt: skip
    add("--served", default="docs/results/served-accuracy.json",
        help="bench/served_accuracy.py's --out for that model (default "
        "docs/results/served-accuracy.json)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    study = Path(args.study)
    if not (study / "results.json").is_file():
        raise UsageError(f"no results.json in {study}: run `python -m training reproduce` first")
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.with_suffix("")
    try:
        render_page(study, out, plots, args.model_dir, args.served)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the study in {study}: {type(exc).__name__}: {exc}") from None
    print(f"wrote {out} (plots in {plots})")
    return 0
