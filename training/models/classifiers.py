"""Spiking classifiers: SENet18 (the paper's), ResNet20 and WRN-16-8 (its transfer surrogates).

All take images in [0, 1] (normalisation is the model's first layer), encode them directly
over T timesteps, and read out the mean over T of the final linear layer. Every spiking
unit is an MLF neuron (K = len(thresholds); K = 1 is plain LIF).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..snn import ConvBNSpike, DirectEncoder, NeuronConfig, Normalize, merge_time, split_time
from .registry import register_model


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) per timestep: global average pool, FC,
    ReLU, FC, sigmoid, channel-wise scaling. The gate is analog, as in kuangliu's SENet."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return x * w


class SpikingBasicBlock(nn.Module):
    """ResNet basic block over ``[T, B, C, H, W]``: conv-BN-MLF, conv-BN (-SE), add the
    shortcut to the membrane input, MLF."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, neurons: NeuronConfig, se: bool):
        super().__init__()
        self.conv_bn_spike = ConvBNSpike(in_planes, planes, neurons, 3, stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = neurons.batchnorm(planes)
        self.se = SqueezeExcite(planes) if se else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), neurons.batchnorm(planes)
            )
        self.spike = neurons.neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = merge_time(self.conv_bn_spike(x))
        out = self.se(self.bn2(self.conv2(out))) + self.shortcut(merge_time(x))
        return self.spike(split_time(out, x.shape[0]))


class SpikingResNet(nn.Module):
    """Encoder -> stages of basic blocks -> global average pool -> mean over T -> linear."""

    def __init__(
        self,
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        stem_channels: int,
        *,
        in_channels: int,
        num_classes: int,
        neurons: NeuronConfig,
        se: bool,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ):
        super().__init__()
        self.neurons = neurons
        self.timesteps = neurons.timesteps
        self.in_channels = in_channels
        self.num_classes = num_classes
        mean = mean or [0.0] * in_channels
        std = std or [1.0] * in_channels
        self.normalize = Normalize(mean, std)
        self.encoder = DirectEncoder(in_channels, stem_channels, neurons)
        layers: list[nn.Module] = []
        in_planes = stem_channels
        for i, (planes, blocks) in enumerate(zip(stage_channels, blocks_per_stage, strict=True)):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(SpikingBasicBlock(in_planes, planes, stride, neurons, se))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = self.layers(self.encoder(self.normalize(x)))  # [T, B, C, H, W]
        features = spikes.mean(dim=(0, 3, 4))  # mean over T and space; fc is linear, so
        return self.fc(features)  # fc(mean_T) == mean_T(fc): the paper's readout


def _spiking_resnet(
    stage_channels: Sequence[int],
    blocks_per_stage: Sequence[int],
    stem_channels: int,
    se: bool,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    timesteps: int = 4,
    thresholds: Sequence[float] | None = None,
    decay: float = 0.25,
    bn_alpha: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SpikingResNet:
    """The options every classifier shares: input, classes, neurons and normalisation."""
    return SpikingResNet(
        stage_channels,
        blocks_per_stage,
        stem_channels,
        in_channels=in_channels,
        num_classes=num_classes,
        neurons=NeuronConfig.from_kwargs(thresholds, decay, timesteps, bn_alpha),
        se=se,
        mean=mean,
        std=std,
    )


@register_model
def senet18_snn(width: int = 64, **options) -> SpikingResNet:
    """SENet18 (kuangliu/pytorch-cifar layout) with MLF neurons; ~11.3 M params at width 64.
    ``options``: in_channels, num_classes, timesteps, thresholds, decay, bn_alpha, mean, std."""
    return _spiking_resnet([width, 2 * width, 4 * width, 8 * width], [2, 2, 2, 2], width, True,
                           **options)  # fmt: skip


@register_model
def resnet20_snn(width: int = 16, **options) -> SpikingResNet:
    """CIFAR ResNet20 (He et al. 2016): 3 stages x 3 blocks, 16/32/64 channels at width 16."""
    return _spiking_resnet([width, 2 * width, 4 * width], [3, 3, 3], width, False, **options)


@register_model
def wrn16_8_snn(width: int = 16, widen_factor: int = 8, **options) -> SpikingResNet:
    """Wide ResNet 16-8 (Zagoruyko & Komodakis 2016): 3 stages x 2 blocks, widened 8x
    (128/256/512 channels at width 16). Post-activation basic blocks, no dropout."""
    k = widen_factor
    return _spiking_resnet([width * k, 2 * width * k, 4 * width * k], [2, 2, 2], width, False,
                           **options)  # fmt: skip
