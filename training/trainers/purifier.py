"""``train-purifier``: Algorithm 1 of the paper.

Per batch: attack the frozen classifier (FGSM at twice the evaluation epsilon by
default), feed the adversarial image to the purifier, and minimise eq. 10 —
``L_rec + 0.5 * L_asym + 0.05 * L_tv`` — where ``L_rec`` is pure Charbonnier for the first
``charbonnier_epochs`` epochs and ``beta * Charbonnier + (1 - beta) * L2`` after.

The *true noise level* that the noise-extraction network learns to predict is the per-pixel
magnitude of the perturbation the attack actually added, ``sigma = |x_adv - x|``. For an
L-inf attack this is epsilon wherever the perturbation was not clipped by the [0, 1] pixel
range and smaller where it was (e.g. on Fashion-MNIST's black background, where FGSM's
negative steps vanish), so the map tells the non-blind denoiser exactly where and how much
to remove — the role CBDNet's noise-level map plays for camera noise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks import Budget, build_attack
from ..checkpoint import load_model
from ..config import EPS_RANGE_ATTACKS, TrainConfig
from ..distributed import autocast, epoch_generator
from ..errors import UsageError
from ..losses import PurifierLossWeights, purifier_loss
from ..models import create_model
from ..threat_models import PurifiedClassifier
from .base import Trainer, accuracy


def build_purifier(config: TrainConfig, info) -> nn.Module:
    return create_model(
        "purifier",
        width=config.width,
        in_channels=info.in_channels,
        timesteps=config.timesteps,
        thresholds=list(config.thresholds),
    )


def purifier_attack(
    name: str, model: nn.Module, x, y, eps: float, steps: int, gen: torch.Generator
) -> torch.Tensor:
    """``name`` at ``eps`` on ``model``, its randomness drawn from ``gen``."""
    if name == "gaussian":
        budget = Budget(0.0, sigma=eps)
    else:
        budget = Budget(eps, steps=None if name == "fgsm" else steps)
    return build_attack(name, model, budget, generator=gen)(x, y)


def mixed_purifier_batch(
    attack: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    gen: torch.Generator,
    *,
    clean_fraction: float = 0.0,
    eps_min: float | None = None,
) -> torch.Tensor:
    """The purifier's training input: ``attack`` at ``eps`` (Algorithm 1, line 4) or, with
    ``eps_min``, at a per-sample epsilon drawn uniformly from ``[eps_min, eps]``; then the
    first ``clean_fraction`` of the (already shuffled) batch is left clean.

    A per-sample epsilon is exact for FGSM, whose output is ``clip(x + eps * sign(g))``: the
    sign is taken once from a unit-epsilon step (a pixel at the box edge that the step
    cannot move gets 0 either way), and for Gaussian noise, whose sample scales with eps."""
    if eps_min is None:
        x_adv = purifier_attack(attack, model, x, y, eps, steps, gen)
    else:
        if attack not in EPS_RANGE_ATTACKS:
            raise ValueError("a per-sample epsilon needs FGSM or Gaussian noise")
        lo = torch.full((len(x),), float(eps_min))
        eps_i = (lo + torch.rand(len(x), generator=gen) * (eps - eps_min)).to(x.device)
        if attack == "gaussian":  # a standard normal sample, scaled per sample below
            direction = torch.randn(x.shape, generator=gen).to(x.device)
        else:
            direction = (purifier_attack(attack, model, x, y, 1.0, steps, gen) - x).sign()
        x_adv = (x + eps_i.view(-1, *[1] * (x.dim() - 1)) * direction).clamp(0, 1)
    n_clean = int(round(clean_fraction * len(x)))
    if n_clean:
        x_adv = torch.cat([x[:n_clean], x_adv[n_clean:]])
    return x_adv.detach()


class PurifierTrainer(Trainer):
    """Algorithm 1: the classifier is frozen; the purifier learns to undo its attacks."""

    # the mean of purified clean and purified attacked accuracy: a purifier that buys
    # robustness with clean accuracy (or the reverse) is not the best one
    score_name = "val_purified_mean_acc"

    def __init__(self, config, device, dist):
        super().__init__(config, device, dist)
        classifier, cmeta = load_model(config.classifier, map_location=str(device))
        if cmeta.get("dataset") not in (None, config.dataset):
            raise UsageError(
                f"--classifier was trained on {cmeta.get('dataset')!r}, not {config.dataset!r}"
            )
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.classifier = self.kernels(classifier).eval()
        self.attack_eps = (
            config.attack_eps if config.attack_eps is not None else 2 * config.eval_eps
        )
        self.attack = config.attack
        self.model = self.wrap(build_purifier(config, self.data.info))
        # --attack-target pipeline: the attack sees purifier and classifier end to end, the
        # purifier in eval mode and as it is at that step (its weights are not updated by
        # the attack: the step's zero_grad comes after)
        self.attack_model = (
            PurifiedClassifier(self.raw_model, self.classifier)
            if config.attack_target == "pipeline"
            else self.classifier
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.meta_extra = {
            "classifier": str(config.classifier),
            "attack": {
                "name": config.attack,
                "eps": self.attack_eps,
                "steps": config.attack_steps,
                "eps_min": config.attack_eps_min,
                "clean_fraction": config.clean_fraction,
                "target": config.attack_target,
            },  # fmt: skip
        }

    def set_lr(self, epoch: int) -> None:  # Adam at a constant lr (the paper's 1e-4)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr

    def train_step(self, x, y, epoch, gen):
        cfg = self.config
        adaptive = self.attack_model is not self.classifier
        if adaptive:
            self.raw_model.eval()
        x_adv = mixed_purifier_batch(
            self.attack, self.attack_model, x, y, self.attack_eps, cfg.attack_steps, gen,
            clean_fraction=cfg.clean_fraction, eps_min=cfg.attack_eps_min,
        )  # fmt: skip
        if adaptive:
            self.raw_model.train()
        sigma = (x_adv - x).abs()  # the true per-pixel noise level (module docstring)
        beta = 1.0 if epoch <= cfg.charbonnier_epochs else cfg.beta
        with autocast(self.device):
            purified, noise_level = self.model(x_adv)
        losses = purifier_loss(
            purified.float(), x, noise_level.float(), sigma, PurifierLossWeights(beta=beta)
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        with torch.no_grad():
            acc = (self.classifier(purified.float()).argmax(1) == y).float().mean().item() * 100
        return {**{k: v.item() for k, v in losses.items()}, "purified_acc": acc}

    def validate(self):
        purifier = self.raw_model.eval()
        cfg = self.config
        gen = epoch_generator(cfg.seed, 0, salt=77)

        def purify_then_classify(x):
            return self.classifier(purifier(x)[0])

        def attacked(eps):  # the training attack's view: the classifier, or the pipeline
            return lambda x, y: purifier_attack(
                self.attack, self.attack_model, x, y, eps, cfg.attack_steps, gen
            )

        out = {
            "val_clean_acc": accuracy(self.classifier, self.data.val, self.device),
            "val_purified_clean_acc": accuracy(purify_then_classify, self.data.val, self.device),
            "val_attacked_acc": accuracy(
                self.classifier, self.data.val, self.device, transform=attacked(cfg.eval_eps)
            ),
            "val_purified_acc": accuracy(
                purify_then_classify, self.data.val, self.device, transform=attacked(cfg.eval_eps)
            ),
        }
        out["val_purified_mean_acc"] = (out["val_purified_clean_acc"] + out["val_purified_acc"]) / 2
        return out
