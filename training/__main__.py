"""``python -m training <command>`` (also ``spikeguard-train``).

Each command lives in its own module exposing ``configure(parser, command)`` and
``run(args) -> int``; a module is imported only when its command runs. Bad arguments exit
with code 2 and one line on stderr (argparse's own errors, ``UsageError`` and a missing
dataset alike).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .data import DatasetNotFoundError
from .errors import UsageError

TRAIN = "training.trainers.cli"
COMMANDS: dict[str, tuple[str, str]] = {
    "train-classifier": (TRAIN, "train a spiking classifier (STBP)"),
    "adv-train": (TRAIN, "PGD adversarial training of a classifier (the baseline)"),
    "train-purifier": (TRAIN, "train the purifier against a classifier (Algorithm 1)"),
    "evaluate": (
        "training.evaluation.cli",
        "attack and evaluate defences under several threat models",
    ),
    "detect": ("training.detection.cli", "the purifier's noise level as an attack detector"),
    "export": ("training.export.cli", "export purifier + classifier to ONNX with a manifest"),
    "validate-model": ("training.export.cli", "check a model directory against the contract"),
    "reproduce": ("training.reproduce", "run the paper's whole study, resumably"),
    "results-page": ("training.results_page.cli", "render docs/results.md from a study"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="spikeguard-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            importlib.import_module(module_name).configure(p, name)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (UsageError, DatasetNotFoundError) as exc:
        print(f"spikeguard-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
