"""The data a training run sees: a fixed validation split carved off the training split
(the test split is never used in training), and each epoch's batches, shuffled by the
epoch's generator and sharded across DDP ranks (each rank takes every world-size-th
sample of the permutation, equal shard sizes on every rank)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainConfig
from .data import Split, augment, batches, dataset_info, load_split
from .distributed import Distributed, epoch_generator

VALIDATION_SIZE = 5000  # held out from the training split; the test split is never used here


@dataclass
class Data:
    train: Split
    val: Split
    info: Any


def load_data(config: TrainConfig) -> Data:
    info = dataset_info(config.dataset)
    full = load_split(config.dataset, train=True, data_dir=config.data_dir)
    # a fixed validation split carved off the training data (seeded independently of --seed,
    # so runs with different seeds select on the same images)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(12345))
    n_val = min(VALIDATION_SIZE, len(full) // 10)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = Split(full.images[train_idx], full.labels[train_idx]).subset(config.subset, config.seed)
    val = Split(full.images[val_idx], full.labels[val_idx]).first(min(config.val_images, n_val))
    return Data(train, val, info)


def epoch_batches(
    data: Data, config: TrainConfig, epoch: int, dist: Distributed, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(data.train), generator=gen)
    # equal shard sizes on every rank keep DDP's collective calls in step
    per_rank = len(order) // dist.world_size
    shard = order[dist.rank :: dist.world_size][:per_rank]
    for x, y in batches(data.train, config.batch_size, shuffle=False, indices=shard):
        if config.augment:
            x = augment(x, data.info.hflip, gen)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def batches_per_epoch(data: Data, config: TrainConfig, dist: Distributed) -> int:
    return math.ceil((len(data.train) // dist.world_size) / config.batch_size)
