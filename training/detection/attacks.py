"""The adversarial images the noise-level detector is tested on.

* ``worst_case``: one of the evaluation's attacks (APGD-CE, PGD, ...) under a threat model,
  repeated with each surrogate gradient shape on the samples the defended pipeline still
  classifies correctly, as ``training.evaluation`` does: an image counts as *fooled* if any
  shape fools the pipeline, and the fooling example is the one kept.
* ``adaptive``: the attacker who also keeps a detector's score low: the mean noise level
  (``score="mean"``) or the residual mean |purified - input| (``score="residual"``). PGD
  end to end on ``CE(logits, y) - lambda * score`` for each lambda and surrogate shape; an
  example is *accepted* when it fools the pipeline and its score is at or under the
  detector's threshold (the constrained variant: only undetected examples count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks import PGD, SPECS, Attack, Budget, build_attack, cross_entropy
from ..snn import use_surrogate
from ..threat_models import Defence
from .stats import image_scores


def make_attack(
    name: str, model: Any, eps: float, steps: int | None, *, stop_when_fooled: bool, seed: int
) -> Attack:
    """The evaluation's attack ``name`` with its default budget (step size 2.5 eps / steps:
    the edge of the ball is reachable at any eps)."""
    budget = Budget(eps, steps=steps if SPECS[name].steps is not None else None)
    return build_attack(name, model, budget, stop_when_fooled=stop_when_fooled, seed=seed)


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def batch_seed(seed: int, batch: int) -> int:
    return seed * 1_000_003 + batch  # as the evaluation seeds its batches


@dataclass
class AttackedSet:
    """Adversarial images of one setting and what the pipeline made of them."""

    images: torch.Tensor
    fooled: torch.Tensor  # bool [N]: correct on the clean image, wrong on this one
    fooled_by: Counter = field(default_factory=Counter)
    settings: dict[str, Any] = field(default_factory=dict)


def worst_case(
    defence: Defence,
    threat: str,
    attack: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int | None,
    surrogates: Sequence[str],
    seed: int = 0,
    batch_size: int = 100,
) -> AttackedSet:
    """``attack`` under ``threat`` with the per-sample worst case over ``surrogates``. The
    first shape attacks every image (so each has an adversarial version); later shapes
    attack only those the pipeline still classifies correctly."""
    judge = defence.pipeline
    attacked = defence.attacked_model(threat)
    images, counts = x.clone(), Counter()
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    settings: dict[str, Any] = {}
    for b, begin in enumerate(range(0, len(y), batch_size)):
        xb, yb = x[begin : begin + batch_size], y[begin : begin + batch_size]
        correct = predictions(judge, xb, batch_size) == yb
        alive = correct.clone()
        for i, shape in enumerate(surrogates):
            idx = torch.arange(len(yb), device=x.device) if i == 0 else alive.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            adversary = make_attack(
                attack, attacked, eps, steps, seed=batch_seed(seed, b),
                stop_when_fooled=defence.matches_attacked(threat),
            )  # fmt: skip
            settings = adversary.settings()
            with use_surrogate(attacked, shape):
                out = adversary(xb[idx], yb[idx])
            newly = (predictions(judge, out, batch_size) != yb[idx]) & alive[idx]
            keep = torch.ones_like(newly) if i == 0 else newly
            images[begin + idx[keep]] = out[keep]
            alive[idx[newly]] = False
            counts[shape] += int(newly.sum())
        fooled[begin : begin + len(yb)] = correct & ~alive
    return AttackedSet(images, fooled.cpu(), counts, settings)


class NoiseAwarePipeline(nn.Module):
    """``classifier(purifier(x)[0])`` that also keeps the batch's per-image detector
    scores of its last forward pass (with their graph), for the adaptive loss: ``mean``,
    the mean noise level, and ``residual``, the mean |purified - input|."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier, self.classifier = purifier, classifier
        self.scores: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        purified, noise = self.purifier(x)
        self.scores = {
            "mean": noise.flatten(1).mean(1),
            "residual": (purified - x).abs().flatten(1).mean(1),
        }
        return self.classifier(purified)


_SCORE_NAMES = {"mean": "mean_noise_level", "residual": "residual"}


def noise_penalised_loss(model: NoiseAwarePipeline, lam: float, score: str = "mean") -> Callable:
    """Per-sample ``CE - lam * score`` of ``model``'s last forward pass (the attack
    computes the loss right after the forward pass of the same input)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = model.scores.get(score)
        assert value is not None and value.shape[0] == logits.shape[0]
        return cross_entropy(logits, y) - lam * value

    loss.__name__ = f"ce_minus_{lam:g}_x_{_SCORE_NAMES[score]}"
    return loss


@dataclass
class AdaptiveResult:
    images: torch.Tensor  # the accepted example where there is one, else the last lambda's
    accepted: torch.Tensor  # bool [N]: fools the pipeline and passes the detector
    fooled: torch.Tensor  # bool [N]: fools the pipeline (any lambda, any shape)
    by_lambda: dict[float, dict[str, Any]]  # first shape, every image: raw scores, fooled
    accepted_by: Counter
    settings: dict[str, Any]


def adaptive(
    defence: Defence,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threshold: float,
    eps: float,
    steps: int,
    lambdas: Sequence[float],
    surrogates: Sequence[str],
    seed: int = 0,
    batch_size: int = 100,
    score: str = "mean",
) -> AdaptiveResult:
    """For each lambda and shape, PGD (random start, ``steps`` of 2.5 eps / steps, the last
    iterate) on the loss penalised by ``score`` (the detector's, with its ``threshold``);
    per sample the first accepted example is kept.
    The first shape attacks every image at every lambda (``by_lambda`` records its raw
    scores); later shapes only the images the pipeline classifies correctly that have no
    accepted example yet (no other image can be accepted)."""
    n, device = len(y), x.device
    state = _AdaptiveState(
        images=x.clone(),
        accepted=torch.zeros(n, dtype=torch.bool, device=device),
        fooled=torch.zeros(n, dtype=torch.bool, device=device),
        correct=predictions(defence.pipeline, x, batch_size) == y,
    )
    pipeline = NoiseAwarePipeline(defence.purifier, defence.classifier)
    by_lambda: dict[float, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for lam in lambdas:
        raw: list[dict[str, np.ndarray]] = []
        lam_fooled = torch.zeros(n, dtype=torch.bool, device=device)
        for b, begin in enumerate(range(0, n, batch_size)):
            rows = torch.arange(begin, min(begin + batch_size, n), device=device)
            for i, shape in enumerate(surrogates):
                # later shapes: only images that can still be accepted (correct, not yet)
                idx = rows if i == 0 else rows[state.correct[rows] & ~state.accepted[rows]]
                if idx.numel() == 0:
                    break
                loss = noise_penalised_loss(pipeline, lam, score)
                alpha = 2.5 * eps / max(steps, 1)
                attack = PGD(pipeline, eps, alpha, steps, loss_fn=loss, seed=batch_seed(seed, b))
                settings = attack.settings()
                with use_surrogate(pipeline, shape):
                    out = attack(x[idx], y[idx])
                scores, wrong = state.update(
                    defence, out, idx, y, (score, threshold), i == 0, batch_size
                )
                state.counts[f"lambda={lam:g}:{shape}"] += int(scores.pop("accepted"))
                if i == 0:
                    raw.append(scores)
                    lam_fooled[idx] = wrong
        by_lambda[float(lam)] = {
            "scores": {k: np.concatenate([r[k] for r in raw]) for k in raw[0]},
            "fooled": lam_fooled.cpu(),
        }
    settings.pop("loss", None)
    return AdaptiveResult(
        state.images, state.accepted.cpu(), state.fooled.cpu(), by_lambda, state.counts, settings
    )


@dataclass
class _AdaptiveState:
    images: torch.Tensor
    accepted: torch.Tensor
    fooled: torch.Tensor
    correct: torch.Tensor
    counts: Counter = field(default_factory=Counter)

    def update(self, defence, out, idx, y, detector, first, batch_size):
        """Records the examples ``out`` of the images ``idx`` against ``detector`` (its
        score's name and threshold); returns their raw scores (with the number newly
        accepted under ``"accepted"``) and the fooled mask."""
        score, threshold = detector
        scores = image_scores(defence.purifier, out)
        wrong = (predictions(defence.pipeline, out, batch_size) != y[idx]) & self.correct[idx]
        below = torch.from_numpy(scores[score] <= threshold).to(wrong.device)
        ok = wrong & below & ~self.accepted[idx]
        # keep an accepted example; until there is one, the first shape's latest
        replace = ~self.accepted[idx] if first else ok
        self.images[idx[replace]] = out[replace]
        self.accepted[idx[ok]] = True
        self.fooled[idx[wrong]] = True
        return {**scores, "accepted": int(ok.sum())}, wrong
