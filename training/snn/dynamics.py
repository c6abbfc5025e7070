"""One time step of eq. 6, as the reference loop and the training kernels both run it."""

from __future__ import annotations

import torch


def charge(u: torch.Tensor, fired: torch.Tensor, x_t: torch.Tensor, decay: float) -> torch.Tensor:
    """The membrane after one step: leak, hard reset where the unit fired, new input."""
    return decay * u * (1 - fired) + x_t


def fire(u: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """The spikes of the K thresholds (Heaviside, no gradient: the kernels' forward)."""
    return (u >= v_th).to(u.dtype)


def zero_membrane(x: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """``[K, B, ...]`` zeros: every unit starts each call at rest."""
    return torch.zeros((v_th.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
