"""Losses of the paper (eqs. 7-10) and online label smoothing.

Image tensors are ``[B, C, H, W]`` in [0, 1]. Reductions are means over pixels and samples
(the ``1/s`` of eq. 7), so loss values do not depend on image size or batch size.

The Charbonnier term is applied per pixel, ``mean(sqrt((x_hat - x)^2 + c^2))`` (Lai et al.
2017, as CBDNet and most restoration code do): a smooth L1 whose gradient stays defined
at zero error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHARBONNIER_EPS = 1e-3
ASYM_GAMMA = 0.3
LAMBDA_ASYM = 0.5
LAMBDA_TV = 0.05


def charbonnier(x_hat: torch.Tensor, x: torch.Tensor, c: float = CHARBONNIER_EPS) -> torch.Tensor:
    return torch.sqrt((x_hat - x) ** 2 + c**2).mean()


def reconstruction_loss(
    x_hat: torch.Tensor, x: torch.Tensor, beta: float, c: float = CHARBONNIER_EPS
) -> torch.Tensor:
    """Eq. 7: ``beta * Charbonnier + (1 - beta) * L2``; ``beta = 1`` is pure Charbonnier."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * charbonnier(x_hat, x, c) + (1 - beta) * F.mse_loss(x_hat, x)


def asymmetric_loss(
    sigma_hat: torch.Tensor, sigma: torch.Tensor, gamma: float = ASYM_GAMMA
) -> torch.Tensor:
    """Eq. 8: ``|gamma - 1[sigma_hat < sigma]| * (sigma_hat - sigma)^2``, averaged.

    With ``0 < gamma < 0.5`` under-estimates weigh ``1 - gamma`` and over-estimates
    ``gamma``: a non-blind denoiser fails on too low a noise level, not too high."""
    diff = sigma_hat - sigma
    weight = torch.abs(gamma - (diff < 0).to(diff.dtype))
    return (weight * diff**2).mean()


def tv_loss(sigma_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 9: squared horizontal and vertical differences of the noise map, averaged."""
    dh = sigma_hat[..., :, 1:] - sigma_hat[..., :, :-1]
    dv = sigma_hat[..., 1:, :] - sigma_hat[..., :-1, :]
    return (dh**2).mean() + (dv**2).mean()


@dataclass(frozen=True)
class PurifierLossWeights:
    beta: float = 1.0
    gamma: float = ASYM_GAMMA
    lambda_asym: float = LAMBDA_ASYM
    lambda_tv: float = LAMBDA_TV


def purifier_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    sigma_hat: torch.Tensor,
    sigma: torch.Tensor,
    weights: PurifierLossWeights = PurifierLossWeights(),
) -> dict[str, torch.Tensor]:
    """Eq. 10: ``L_rec + lambda_asym * L_asym + lambda_tv * L_tv``; returns every term."""
    rec = reconstruction_loss(x_hat, x, weights.beta)
    asym = asymmetric_loss(sigma_hat, sigma, weights.gamma)
    tv = tv_loss(sigma_hat)
    total = rec + weights.lambda_asym * asym + weights.lambda_tv * tv
    return {"loss": total, "rec": rec, "asym": asym, "tv": tv}


class OnlineLabelSmoothing(nn.Module):
    """Online label smoothing (Zhang et al. 2021, "Delving deep into label smoothing").

    Loss = ``alpha * CE(z, y) + (1 - alpha) * CE(z, S[y])`` where row ``S[c]`` is the mean
    predicted distribution of the *correctly classified* training samples of class ``c``
    during the previous epoch. Epoch 0 uses ordinary label smoothing ``smoothing``.
    Call ``next_epoch()`` at the end of every training epoch. The soft-label matrices are
    buffers, so they are saved and restored with the run's checkpoints.
    """

    def __init__(self, num_classes: int, alpha: float = 0.5, smoothing: float = 0.1):
        super().__init__()
        self.alpha = alpha
        soft = torch.full((num_classes, num_classes), smoothing / max(num_classes - 1, 1))
        soft.fill_diagonal_(1 - smoothing)
        self.register_buffer("soft_labels", soft)
        self.register_buffer("accumulated", torch.zeros(num_classes, num_classes))
        self.register_buffer("counts", torch.zeros(num_classes))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=1)
        if self.training:
            self._accumulate(log_probs.detach().exp(), target)
        soft = -(self.soft_labels[target] * log_probs).sum(1).mean()
        hard = F.nll_loss(log_probs, target)
        return self.alpha * hard + (1 - self.alpha) * soft

    @torch.no_grad()
    def _accumulate(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        correct = probs.argmax(1) == target
        self.accumulated.index_add_(0, target[correct], probs[correct])
        self.counts.index_add_(
            0, target[correct], torch.ones_like(target[correct], dtype=probs.dtype)
        )

    @torch.no_grad()
    def next_epoch(self) -> None:
        seen = self.counts > 0
        # a class with no correct sample keeps its previous soft label
        self.soft_labels[seen] = self.accumulated[seen] / self.counts[seen, None]
        self.accumulated.zero_()
        self.counts.zero_()
