"""Trainers: ``base`` (the shared epoch loop), ``classifier`` (STBP and PGD adversarial
training), ``purifier`` (Algorithm 1); ``train(config)`` runs the one a configuration
names, ``cli`` is the command line of ``train-classifier``, ``adv-train`` and
``train-purifier``. Configuration: ``training/config.py``; devices and DDP:
``training/distributed.py``; the epoch's sharded batches: ``training/sharding.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import runs
from ..config import TrainConfig, validate
from ..distributed import resolve_device, setup_distributed
from .base import Trainer
from .classifier import ClassifierTrainer
from .purifier import PurifierTrainer

__all__ = ["ClassifierTrainer", "PurifierTrainer", "Trainer", "train"]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs one training command; the Python API behind the command line. ``on_epoch(epoch,
    record)`` runs after each epoch's checkpoints are on disk."""
    validate(config)
    torch.manual_seed(config.seed)
    dist = setup_distributed(resolve_device(config.device))
    device = resolve_device(config.device, dist.local_rank)
    run_dir = Path(config.runs_dir) / config.name
    if dist.is_main:
        resume = runs.prepare_run_dir(run_dir, config, resume=resume, force=force)
    if dist.enabled:
        flag = [resume]
        torch.distributed.broadcast_object_list(flag, src=0)
        resume = flag[0]
    if config.command == "train-purifier":
        trainer: Trainer = PurifierTrainer(config, device, dist)
    else:
        trainer = ClassifierTrainer(config, device, dist, adversarial=config.command == "adv-train")
    trainer.on_epoch = on_epoch
    return trainer.fit(resume)
