"""Spiking image purifier (CBDNet-style, Guo et al. 2019; the paper's Figure 3).

* Noise-extraction FCN: 5 conv 3x3 layers (``width // 2`` channels; 32 at paper width),
  spiking between them; its last layer is analog (mean over T) and a sigmoid maps it to a
  per-pixel noise-level map in (0, 1).
* Non-blind denoiser: a residual U-Net of 16 conv 3x3 layers (width, 2*width, 4*width
  channels: 64/128/256 at paper width), average-pool down, transposed-conv up, additive
  skips. It sees ``concat(image, noise_level)`` directly encoded over T; its 1x1 output
  layer is analog (mean over T) and is added to the input image (global residual).

``forward(x)`` returns ``(purified, noise_level)``, purified clamped to [0, 1].
About 4.4 M parameters at width 64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..snn import ConvBNSpike, DirectEncoder, NeuronConfig, merge_time, split_time
from .registry import register_model


def _stack(in_channels: int, out_channels: int, n: int, neurons: NeuronConfig) -> nn.Sequential:
    layers = [ConvBNSpike(in_channels, out_channels, neurons)]
    layers += [ConvBNSpike(out_channels, out_channels, neurons) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class TimePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_time(nn.functional.avg_pool2d(merge_time(x), 2), x.shape[0])


class SpikingUp(nn.Module):
    """Transposed conv 2x2/2 -> tdBN -> MLF over ``[T, B, C, H, W]``. Where pooling floored
    an odd size (25 -> 12 -> 24), the output is zero-padded at the bottom/right to the skip's
    size."""

    def __init__(self, in_channels: int, out_channels: int, neurons: NeuronConfig):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, 2, bias=False)
        self.bn = neurons.batchnorm(out_channels)
        self.spike = neurons.neuron()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.up(merge_time(x)))
        h, w = skip.shape[-2:]
        dh, dw = h - out.shape[-2], w - out.shape[-1]
        if dh or dw:
            out = nn.functional.pad(out, (0, dw, 0, dh))
        return self.spike(split_time(out, x.shape[0])) + skip


class NoiseExtractor(nn.Module):
    """5-layer spiking FCN estimating a per-pixel noise level map in (0, 1)."""

    def __init__(self, in_channels: int, channels: int, neurons: NeuronConfig):
        super().__init__()
        self.encoder = DirectEncoder(in_channels, channels, neurons)
        self.body = _stack(channels, channels, 3, neurons)
        self.head = nn.Conv2d(channels, in_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = self.body(self.encoder(x))
        out = split_time(self.head(merge_time(spikes)), spikes.shape[0]).mean(0)
        return torch.sigmoid(out)


class ResidualUNet(nn.Module):
    """Spiking residual U-Net: 2 + 3 + 6 + 3 + 2 = 16 conv 3x3 layers and a 1x1 head."""

    def __init__(self, in_channels: int, width: int, neurons: NeuronConfig):
        super().__init__()
        self.encoder = DirectEncoder(2 * in_channels, width, neurons)
        self.inc = _stack(width, width, 1, neurons)
        self.pool = TimePool()
        self.down1 = _stack(width, 2 * width, 3, neurons)
        self.down2 = _stack(2 * width, 4 * width, 6, neurons)
        self.up1 = SpikingUp(4 * width, 2 * width, neurons)
        self.conv_up1 = _stack(2 * width, 2 * width, 3, neurons)
        self.up2 = SpikingUp(2 * width, width, neurons)
        self.conv_up2 = _stack(width, width, 2, neurons)
        self.head = nn.Conv2d(width, in_channels, 1)
        # the residual starts at zero, so an untrained purifier is the identity and training
        # only has to learn what to remove (the head gets gradients from the first step)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        s1 = self.inc(self.encoder(torch.cat([x, noise_level], dim=1)))
        s2 = self.down1(self.pool(s1))
        s3 = self.down2(self.pool(s2))
        u1 = self.conv_up1(self.up1(s3, s2))
        u2 = self.conv_up2(self.up2(u1, s1))
        residual = split_time(self.head(merge_time(u2)), u2.shape[0]).mean(0)
        return x + residual


class Purifier(nn.Module):
    def __init__(self, in_channels: int, width: int, neurons: NeuronConfig):
        super().__init__()
        self.neurons = neurons
        self.timesteps = neurons.timesteps
        self.in_channels = in_channels
        self.noise = NoiseExtractor(in_channels, max(width // 2, 4), neurons)
        self.denoiser = ResidualUNet(in_channels, width, neurons)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise_level = self.noise(x)
        purified = self.denoiser(x, noise_level).clamp(0.0, 1.0)
        return purified, noise_level


@register_model
def purifier(
    width: int = 64,
    in_channels: int = 3,
    timesteps: int = 4,
    thresholds: Sequence[float] | None = None,
    decay: float = 0.25,
    bn_alpha: float = 1.0,
) -> Purifier:
    neurons = NeuronConfig.from_kwargs(thresholds, decay, timesteps, bn_alpha)
    return Purifier(in_channels, width, neurons)
