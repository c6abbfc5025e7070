"""Checkpoints in safetensors: tensors plus a JSON description in the file's metadata, so
one file says which model it holds and how to rebuild it. Never pickles.

Layout of a checkpoint file:
    tensors:   ``model.<state_dict key>`` and, for resumable training checkpoints,
               ``optim.<param index>.<state key>`` and ``extra.<name>.<key>``
    metadata:  ``spikeguard`` -> JSON ``{"model": name, "model_kwargs": {...}, ...}``
               ``optim_scalars`` -> JSON of the optimizer's non-tensor state
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from contract import make_shareable

from .models import create_model

META_KEY = "spikeguard"


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata)
    make_shareable(tmp)  # safetensors writes owner-only files
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra_modules: dict[str, nn.Module] | None = None,
) -> None:
    """Writes ``path`` atomically. ``meta`` must be JSON-serialisable; the model's registry
    name and constructor kwargs are added from ``create_model``."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    info = {"model": model.model_name, "model_kwargs": model.model_kwargs, **meta}
    metadata = {META_KEY: json.dumps(info)}
    if optimizer is not None:
        scalars: dict[str, Any] = {
            "param_groups": optimizer.state_dict()["param_groups"],
            "state": {},
        }
        for idx, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    tensors[f"optim.{idx}.{key}"] = value
                else:
                    scalars["state"].setdefault(str(idx), {})[key] = (
                        value.item() if torch.is_tensor(value) else value
                    )
        metadata["optim_scalars"] = json.dumps(scalars)
    for name, module in (extra_modules or {}).items():
        tensors.update({f"extra.{name}.{k}": v for k, v in module.state_dict().items()})
    _atomic_save(tensors, metadata, Path(path))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if META_KEY not in metadata:
        raise ValueError(f"{path} is not a spikeguard checkpoint (no '{META_KEY}' metadata)")
    return json.loads(metadata[META_KEY])


def _tensors(path: str | os.PathLike, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            if key.startswith(prefix):
                out[key[len(prefix) :]] = f.get_tensor(key)
    return out


def load_model(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model a checkpoint describes and loads its weights (eval mode)."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    model = create_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(_tensors(path, "model."))
    return model.to(map_location).eval(), meta


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra_modules: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Restores weights, optimizer state and extra modules in place; returns the metadata."""
    target = getattr(model, "module", model)
    target.load_state_dict(_tensors(path, "model."))
    if optimizer is not None:
        with safe_open(str(path), framework="pt") as f:
            scalars = json.loads((f.metadata() or {})["optim_scalars"])
        state: dict[int, dict[str, Any]] = {}
        for key, value in _tensors(path, "optim.").items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        for idx, values in scalars["state"].items():
            for name, value in values.items():
                state.setdefault(int(idx), {})[name] = (
                    torch.tensor(value) if name == "step" else value
                )
        optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
    for name, module in (extra_modules or {}).items():
        module.load_state_dict(_tensors(path, f"extra.{name}."))
    return read_meta(path)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accepts a checkpoint file or a run directory (then its ``best.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "latest.safetensors"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"no best.safetensors or latest.safetensors in {p}")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p
