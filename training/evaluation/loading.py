"""What an evaluation loads: checkpoints (hashed, frozen, in eval mode), the defences
built from them, the transfer sources, and the dataset they agree on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract import sha256_file

from ..checkpoint import load_model, resolve_checkpoint
from ..errors import UsageError
from ..threat_models import Defence
from .config import SuiteConfig


@dataclass
class Loaded:
    model: nn.Module
    meta: dict[str, Any]
    path: Path
    sha256: str


def load(path: str, what: str, device: torch.device) -> Loaded:
    try:
        resolved = resolve_checkpoint(path)
        model, meta = load_model(resolved, map_location=str(device))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        raise UsageError(f"cannot load {what} checkpoint {path}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return Loaded(model.eval(), meta, resolved, sha256_file(resolved))


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def defences(config: SuiteConfig, device: torch.device) -> tuple[list[Defence], dict]:
    classifier = load(config.classifier, "classifier", device)
    loaded = {"classifier": classifier}
    defences = [Defence("none", classifier.model, checkpoints=("classifier",))]
    if config.adv_classifier:
        loaded["adv_classifier"] = load(config.adv_classifier, "adversarially trained", device)
        adv = loaded["adv_classifier"].model
        defences.append(Defence("adv-training", adv, checkpoints=("adv_classifier",)))
    if config.purifier:
        loaded["purifier"] = load(config.purifier, "purifier", device)
        purifier = loaded["purifier"].model
        defences.append(Defence("purifier", classifier.model, purifier, ("classifier", "purifier")))
    if config.ols_classifier:
        loaded["ols_classifier"] = load(config.ols_classifier, "OLS classifier", device)
        ols = loaded["ols_classifier"].model
        defences.append(Defence("purifier+ols", ols, purifier, ("ols_classifier", "purifier")))
    for name, (classifier_path, purifier_path) in config.extra_defences.items():
        if any(d.name == name for d in defences):
            raise UsageError(f"defence {name!r} is defined twice")
        keys = (f"{name}:classifier",) + ((f"{name}:purifier",) if purifier_path else ())
        loaded[keys[0]] = load(str(classifier_path), f"{name} classifier", device)
        purifier_model = None
        if purifier_path:
            loaded[keys[1]] = load(str(purifier_path), f"{name} purifier", device)
            purifier_model = loaded[keys[1]].model
        defences.append(Defence(name, loaded[keys[0]].model, purifier_model, keys))
    for key, item in loaded.items():
        wants_purifier = key == "purifier" or key.endswith(":purifier")
        if wants_purifier != (item.meta.get("model") == "purifier"):
            raise UsageError(f"{item.path} holds a {item.meta.get('model')!r}, not a {key}")
    if config.only_defences:
        unknown = sorted(set(config.only_defences) - {d.name for d in defences})
        if unknown:
            raise UsageError(f"unknown defence(s) {unknown}; have {[d.name for d in defences]}")
        defences = [d for d in defences if d.name in config.only_defences]
    return defences, loaded


def dataset(config: SuiteConfig, loaded: dict[str, Loaded], sources: dict) -> str:
    names = {item.meta.get("dataset") for item in [*loaded.values(), *sources.values()]}
    names.discard(None)
    if config.dataset:
        names.add(config.dataset)
    if not names:
        raise UsageError("the checkpoint does not record its dataset: pass --dataset")
    if len(names) > 1:
        raise UsageError(f"checkpoints and --dataset disagree on the dataset: {sorted(names)}")
    return names.pop()


def sources(config: SuiteConfig, device: torch.device) -> dict[str, Loaded]:
    """The transfer sources by name (their run directory's, made unique)."""
    items: dict[str, Loaded] = {}
    for i, p in enumerate(config.sources):
        item = load(p, "transfer source", device)
        if item.meta.get("model") == "purifier":
            raise UsageError(f"--source {p} holds a purifier, not a classifier")
        name = item.path.parent.name if item.path.parent.name else f"source{i}"
        if name in items:
            name = f"{name}-{i}"
        items[name] = item
    return items
