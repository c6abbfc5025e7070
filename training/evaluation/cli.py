"""``python -m training evaluate``: the command line, generated from ``SuiteConfig``'s
fields (each field's ``cli`` metadata: help text and argparse options), so a setting, its
default and its flag are declared once. Exit 0; 1 when a sanity check failed."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field
from typing import Any

from ..threat_models import THREAT_MODELS
from .config import SuiteConfig, command_line_fields
from .suite import run_suite


def _option(f: Field, hints: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The option strings and argparse keywords of one field."""
    options = dict(f.metadata["cli"])
    flags = tuple(options.pop("flags", ("--" + f.name.replace("_", "-"),)))
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    kwargs: dict[str, Any] = {"dest": f.name, **options}
    if default is MISSING:
        kwargs["required"] = True
        return flags, kwargs
    kind = hints[f.name]
    if kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        kwargs.setdefault("default", default)
        return flags, kwargs
    if kwargs.get("action") == "append":
        kwargs.setdefault("default", [])
    elif typing.get_origin(kind) in (Sequence, list, tuple):
        kwargs.setdefault("nargs", "+")
        kwargs.setdefault("default", list(default))
        kwargs.setdefault("type", typing.get_args(kind)[0])
    else:
        kwargs.setdefault("default", default)
        if "type" not in kwargs:
            kwargs["type"] = next(t for t in (int, float, str) if t in _members(kind))
    shown = kwargs["default"]
    if shown not in (None, [], ()) and kwargs.get("action") != "append":
        text = " ".join(map(str, shown)) if isinstance(shown, list) else str(shown)
        kwargs["help"] += f" (default: {text})"
    return flags, kwargs


def _members(kind: Any) -> tuple:
    return typing.get_args(kind) or (kind,)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    hints = typing.get_type_hints(SuiteConfig)
    for f in command_line_fields():
        flags, kwargs = _option(f, hints)
        parser.add_argument(*flags, **kwargs)


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    values = {f.name: getattr(args, f.name) for f in command_line_fields()}
    if values["threat_models"] is None:  # all, transfer only with a source to transfer from
        values["threat_models"] = [t for t in THREAT_MODELS if t != "transfer" or args.sources]
    budgets: dict[str, dict[str, float]] = {}
    for attack, name, value in values["budgets"]:
        budgets.setdefault(attack, {})[name] = value
    values["budgets"] = budgets
    return SuiteConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = run_suite(config, log=lambda line: print(line, flush=True))
    print(f"wrote {result.out_dir / 'summary.md'}")
    if result.failed:
        print(
            f"FAILED: {result.failed} sanity check(s); see {result.out_dir / 'summary.md'}",
            file=sys.stderr,
        )
        return 1
    return 0
