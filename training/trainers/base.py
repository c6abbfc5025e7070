"""The epoch loop every trainer shares: resume, checkpoints (``latest`` every epoch,
``best`` by validation score), the metrics log, the progress bar, the learning-rate
schedule, DDP. Subclasses provide ``train_step`` and ``validate``.

Runs are deterministic given ``--seed``: every epoch draws its shuffling, augmentation and
attack randomness from a generator seeded by (seed, epoch), so a resumed run continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runs
from ..checkpoint import load_training_state, save_checkpoint
from ..config import TrainConfig
from ..data import Split, batches
from ..distributed import Distributed, epoch_generator, param_digest
from ..sharding import batches_per_epoch, epoch_batches, load_data
from ..snn import use_kernels


@torch.no_grad()
def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    device: torch.device,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Top-1 accuracy in percent; ``transform(x, y)`` (e.g. an attack) runs first, with
    gradients enabled."""
    correct = 0
    for x, y in batches(split, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        if transform is not None:
            with torch.enable_grad():
                x = transform(x, y)
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / max(len(split), 1)


class Trainer:
    """Shared epoch loop: resume, checkpoints (latest every epoch, best by validation
    score), metrics log, progress bar, DDP. Subclasses provide ``train_step`` and
    ``validate``."""

    score_name = "val_acc"

    def __init__(self, config: TrainConfig, device: torch.device, dist: Distributed):
        self.config = config
        self.device = device
        self.dist = dist
        self.run_dir = Path(config.runs_dir) / config.name
        self.data = load_data(config)
        self.extra_modules: dict[str, nn.Module] = {}
        self.meta_extra: dict[str, Any] = {}
        # called on the main rank after each epoch's checkpoints are written (reproduce
        # commits the study there)
        self.on_epoch: Callable[[int, dict[str, Any]], None] | None = None

    # subclass hooks -----------------------------------------------------------------
    def train_step(self, x, y, epoch: int, gen: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called after every epoch (e.g. online label smoothing's update)."""

    # -------------------------------------------------------------------------------------
    def kernels(self, model: nn.Module) -> nn.Module:
        """``model`` with the neuron kernels this run trains with: compiled on CPU unless
        ``--no-compile`` (identical results, several times faster), eager otherwise."""
        compiled = self.config.compile and self.device.type == "cpu"
        return use_kernels(model, "compiled" if compiled else "eager")

    def wrap(self, model: nn.Module) -> nn.Module:
        model = self.kernels(model).to(self.device)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        return model

    @property
    def raw_model(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def meta(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": self.config.command,
            "dataset": self.config.dataset,
            "class_names": list(self.data.info.class_names),
            "epoch": epoch,
            "metrics": metrics,
            "config": json.loads(json.dumps(asdict(self.config))),
            **self.meta_extra,
        }

    def fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        log = runs.MetricsLog(self.run_dir)
        start_epoch, best_score, train_seconds = 0, -math.inf, 0.0
        if resume:
            meta = load_training_state(
                self.run_dir / runs.LATEST, self.model, self.optimizer, self.extra_modules
            )
            start_epoch = meta["epoch"]
            best_score = meta.get("best_score", -math.inf)
            train_seconds = meta.get("train_seconds", 0.0)
            if self.dist.is_main:
                log.truncate_after(start_epoch)
                print(f"resuming {self.run_dir} after epoch {start_epoch}", file=sys.stderr)
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            self.set_lr(epoch)
            t0 = time.perf_counter()
            train_metrics = self.run_epoch(epoch)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            self.end_epoch(epoch)
            record = {"epoch": epoch, **train_metrics, "lr": self.current_lr()}
            if self.dist.is_main:
                record.update(self.validate())
                record["seconds"] = round(epoch_seconds, 2)
                score = record[self.score_name]
                extra = {"best_score": max(best_score, score), "train_seconds": train_seconds}
                save_checkpoint(
                    self.run_dir / runs.LATEST, self.model, self.meta(epoch, record) | extra,
                    self.optimizer, self.extra_modules,
                )  # fmt: skip
                if score > best_score:
                    best_score = score
                    save_checkpoint(
                        self.run_dir / runs.BEST, self.model, self.meta(epoch, record) | extra
                    )
                log.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, record)
            self.barrier()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "train_seconds": train_seconds}
        digests = self.gather_digests()
        if self.dist.is_main:
            runs.plot_curves(self.run_dir)
            summary.update(best_score=best_score, rank_param_digests=digests)
            summary["final"] = log.read()[-1] if log.read() else {}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def run_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        totals: dict[str, float] = {}
        seen = 0
        gen = epoch_generator(cfg.seed, epoch, salt=1 + self.dist.rank)
        bar = self.progress(epoch)
        for x, y in epoch_batches(self.data, cfg, epoch, self.dist, self.device):
            stats = self.train_step(x, y, epoch, gen)
            n = len(y)
            seen += n
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value * n
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v / seen:.4g}" for k, v in totals.items()}, refresh=False)
        if bar is not None:
            bar.close()
        return {f"train_{k}": v / max(seen, 1) for k, v in totals.items()}

    def progress(self, epoch: int):
        if not (self.config.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=batches_per_epoch(self.data, self.config, self.dist),
            desc=f"{self.config.name} epoch {epoch}/{self.config.epochs}",
            unit="batch",
            mininterval=2.0,
            dynamic_ncols=True,
        )

    def set_lr(self, epoch: int) -> None:
        cfg = self.config
        if cfg.schedule == "cosine":  # epoch 1 at the full lr, the last close to zero
            factor = 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
        else:
            factor = cfg.lr_decay ** sum(epoch > m for m in cfg.milestones)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def barrier(self) -> None:
        if self.dist.enabled:
            torch.distributed.barrier()

    def gather_digests(self) -> list[str]:
        digest = param_digest(self.model)
        if not self.dist.enabled:
            return [digest]
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, digest)
        return out
