"""Layers around the neurons: time-major reshapes, threshold-dependent batch norm, the
neuron configuration a model is built from, conv-BN-spike blocks, the direct encoder and
the in-model normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .neurons import DEFAULT_DECAY, DEFAULT_THRESHOLDS, DEFAULT_TIMESTEPS, MLF


def merge_time(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` -> ``[T*B, ...]`` so that stateless layers run on all steps at once."""
    return x.flatten(0, 1)


def split_time(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    return x.unflatten(0, (timesteps, -1))


def threshold_batchnorm(channels: int, v_th: float, alpha: float = 1.0) -> nn.BatchNorm2d:
    """Threshold-dependent batch norm (tdBN, Zheng et al. 2021): statistics over time and
    batch (it runs on ``[T*B, C, H, W]``); the affine weight starts at ``alpha * V_th`` so
    pre-activations are on the scale of the first threshold and every layer fires at
    initialisation."""
    bn = nn.BatchNorm2d(channels)
    nn.init.constant_(bn.weight, alpha * v_th)
    nn.init.zeros_(bn.bias)
    return bn


@dataclass(frozen=True)
class NeuronConfig:
    """Everything needed to build the spiking units of a model."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    decay: float = DEFAULT_DECAY
    timesteps: int = DEFAULT_TIMESTEPS
    bn_alpha: float = 1.0

    def neuron(self) -> MLF:
        return MLF(self.thresholds, self.decay)

    def batchnorm(self, channels: int) -> nn.BatchNorm2d:
        return threshold_batchnorm(channels, self.thresholds[0], self.bn_alpha)

    @classmethod
    def from_kwargs(
        cls,
        thresholds: Sequence[float] | None = None,
        decay: float = DEFAULT_DECAY,
        timesteps: int = DEFAULT_TIMESTEPS,
        bn_alpha: float = 1.0,
    ) -> NeuronConfig:
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        th = tuple(float(v) for v in (thresholds or DEFAULT_THRESHOLDS))
        if list(th) != sorted(th) or th[0] <= 0:
            raise ValueError(f"thresholds must be positive and increasing, got {th}")
        return cls(th, decay, timesteps, bn_alpha)


class ConvBNSpike(nn.Module):
    """conv -> tdBN -> MLF over ``[T, B, C, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        neurons: NeuronConfig,
        kernel_size: int = 3,
        stride: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
        )
        self.bn = neurons.batchnorm(out_channels)
        self.spike = neurons.neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spike(split_time(self.bn(self.conv(merge_time(x))), x.shape[0]))


class DirectEncoder(nn.Module):
    """Direct encoding: the image is presented at every timestep. The first conv + BN sees
    the same input each step, so it is computed once and repeated: the output is exactly
    that of T copies (same batch mean and variance); only BatchNorm's running-variance
    update uses the B/(B-1) rather than the TB/(TB-1) correction, a negligible difference."""

    def __init__(self, in_channels: int, out_channels: int, neurons: NeuronConfig):
        super().__init__()
        self.timesteps = neurons.timesteps
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn = neurons.batchnorm(out_channels)
        self.spike = neurons.neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = self.bn(self.conv(x))
        return self.spike(current.unsqueeze(0).expand(self.timesteps, *current.shape))


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; part of the model so attacks work in pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
