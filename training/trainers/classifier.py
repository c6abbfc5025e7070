"""``train-classifier`` (STBP, SGD with momentum) and ``adv-train`` (PGD adversarial
training, Madry et al. 2018: the baseline the paper compares against)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Budget, build_attack
from ..config import TrainConfig
from ..distributed import autocast, epoch_generator
from ..losses import OnlineLabelSmoothing
from ..models import create_model
from .base import Trainer, accuracy


def build_classifier(config: TrainConfig, info) -> nn.Module:
    return create_model(
        config.model,
        width=config.width,
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        timesteps=config.timesteps,
        thresholds=list(config.thresholds),
        mean=list(info.mean),
        std=list(info.std),
    )


class ClassifierTrainer(Trainer):
    """STBP training with SGD + momentum and a piecewise-constant schedule; with
    ``adversarial`` the batch is replaced by PGD examples (Madry et al.)."""

    def __init__(self, config, device, dist, adversarial: bool):
        super().__init__(config, device, dist)
        self.adversarial = adversarial
        self.model = self.wrap(build_classifier(config, self.data.info))
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=False,
        )  # fmt: skip
        self.ols = (
            OnlineLabelSmoothing(self.data.info.num_classes).to(device) if config.ols else None
        )
        if self.ols is not None:
            self.extra_modules["ols"] = self.ols
        if adversarial:
            self.score_name = "val_robust_acc"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.ols is not None:
            return self.ols(logits, y)
        return F.cross_entropy(logits, y)

    def adversarial_budget(self) -> Budget:
        """Madry et al.'s PGD: ``--adv-steps`` steps of ``--adv-alpha`` within ``--adv-eps``."""
        cfg = self.config
        return Budget(cfg.adv_eps, steps=cfg.adv_steps, step_size=cfg.adv_alpha)

    def pgd_examples(self, x, y, gen) -> torch.Tensor:
        model = self.raw_model
        model.eval()
        x_adv = build_attack("pgd", model, self.adversarial_budget(), generator=gen)(x, y)
        model.train()
        return x_adv

    def train_step(self, x, y, epoch, gen):
        if self.adversarial:
            x = self.pgd_examples(x, y, gen)
        with autocast(self.device):
            logits = self.model(x)
        loss = self.loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        acc = (logits.argmax(1) == y).float().mean().item() * 100
        return {"loss": loss.item(), "acc": acc}

    def end_epoch(self, epoch):
        if self.ols is not None:
            if self.dist.enabled:  # every rank's soft labels from all ranks' statistics
                torch.distributed.all_reduce(self.ols.accumulated)
                torch.distributed.all_reduce(self.ols.counts)
            self.ols.next_epoch()

    def validate(self):
        model = self.raw_model.eval()
        out = {"val_acc": accuracy(model, self.data.val, self.device)}
        if self.adversarial:
            subset = self.data.val.first(min(500, len(self.data.val)))
            gen = epoch_generator(self.config.seed, 0, salt=99)
            attack = build_attack("pgd", model, self.adversarial_budget(), generator=gen)
            out["val_robust_acc"] = accuracy(model, subset, self.device, transform=attack)
        return out
