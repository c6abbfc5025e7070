"""Spike counting: forward hooks on every spiking neuron of a model."""

from __future__ import annotations

import torch
from torch import nn

from .neurons import spiking_neurons


class SpikeRecorder:
    """Forward hooks on every spiking neuron of a model, collecting per-image spike counts
    (and per-layer firing rates) of the forward passes made while it is attached.

    Each neuron's output ``[T, B, ...]`` holds spike counts (0..K per unit and step); the
    per-image count sums over time and units.
    """

    def __init__(self, model: nn.Module):
        self.per_image: list[torch.Tensor] = []
        self.rates: dict[str, float] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in spiking_neurons(model)
        ]

    def _hook(self, name: str):
        def hook(_module, _inputs, output: torch.Tensor) -> None:
            dims = [0] + list(range(2, output.dim()))
            self.per_image.append(output.sum(dim=dims))
            self.rates[name] = float((output.detach() > 0).float().mean())

        return hook

    def reset(self) -> None:
        self.per_image.clear()
        self.rates.clear()

    def total(self) -> torch.Tensor:
        """Spikes per image over all neurons recorded since the last reset, shape ``[B]``."""
        if not self.per_image:
            raise RuntimeError("no spiking layer ran since the last reset")
        total = self.per_image[0]
        for count in self.per_image[1:]:
            total = total + count
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> SpikeRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def firing_rates(model: nn.Module, *inputs: torch.Tensor) -> dict[str, float]:
    """Fraction of (timestep, unit) pairs with at least one spike, per spiking layer."""
    with SpikeRecorder(model) as recorder:
        model(*inputs)
        return dict(recorder.rates)


@torch.no_grad()
def spike_count(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Total spikes per image of one forward pass, shape ``[B]``."""
    with SpikeRecorder(model) as recorder:
        model(*inputs)
        return recorder.total()
