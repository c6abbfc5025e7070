"""Spiking neurons: LIF (eq. 5) and MLF (eq. 6), each step of eq. 6 a function.

One time step of a unit with thresholds ``v_th`` (shape ``[K, 1, ...]``)::

    charge: u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]   (the reset of o[t-1] included)
    fire:   o[t] = H(u[t] - v_th)                          (per threshold; surrogate backward)
    emit:   sum over the K thresholds of o[t]

The steps are ``dynamics.py``'s functions. ``mlf_reference`` is the loop written with them
in plain tensor ops (autograd and ONNX export follow it as it is; fire is the surrogate's
Heaviside); the training kernels (``kernels.py``) run the same steps with a hand-written
backward through time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .dynamics import charge, zero_membrane
from .kernels import EAGER, Kernels, MLFFunction, get_kernels
from .surrogates import Rectangular, Surrogate, get_surrogate

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.6, 1.6, 2.6)
DEFAULT_DECAY = 0.25
DEFAULT_TIMESTEPS = 4


def mlf_reference(
    x: torch.Tensor, v_th: torch.Tensor, decay: float, surrogate: Surrogate
) -> torch.Tensor:
    """Eq. 6 over ``x`` ``[T, B, ...]`` from a zero membrane: charge, fire (``surrogate``'s
    Heaviside), emit the sum of the K spikes per step."""
    u = zero_membrane(x, v_th)
    fired = torch.zeros_like(u)
    outputs = []
    for t in range(x.shape[0]):
        u = charge(u, fired, x[t], decay)
        fired = surrogate(u - v_th)
        outputs.append(fired.sum(0))
    return torch.stack(outputs)


class SpikingNeuron(nn.Module):
    """Base class: charge, fire, reset over a time-major input ``[T, B, ...]``."""

    def __init__(self, decay: float = DEFAULT_DECAY, surrogate: Surrogate | None = None):
        super().__init__()
        self.decay = decay
        self.surrogate = surrogate or Rectangular(1.0)
        self.kernels: Kernels = EAGER  # the training path's kernels (``use_kernels``)

    @property
    def levels(self) -> int:
        """Largest value one unit can emit per timestep."""
        return 1

    def extra_repr(self) -> str:
        return f"decay={self.decay}, surrogate={self.surrogate!r}, kernels={self.kernels.name}"


class MLF(SpikingNeuron):
    """Multi-level firing unit (eq. 6): K LIF neurons with thresholds ``thresholds``
    sharing the input, each with its own membrane and hard reset; output = sum of spikes."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        decay: float = DEFAULT_DECAY,
        surrogate: Surrogate | None = None,
    ):
        super().__init__(decay, surrogate)
        if len(thresholds) == 0:
            raise ValueError("an MLF unit needs at least one threshold")
        self.thresholds = tuple(float(v) for v in thresholds)

    @property
    def levels(self) -> int:
        return len(self.thresholds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v_th = torch.tensor(self.thresholds, dtype=x.dtype, device=x.device)
        v_th = v_th.view((len(self.thresholds),) + (1,) * (x.dim() - 1))
        if torch.is_grad_enabled() and x.requires_grad:
            return MLFFunction.apply(x, v_th, self.decay, self.surrogate, self.kernels)
        return mlf_reference(x, v_th, self.decay, self.surrogate)

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}, " + super().extra_repr()


class LIF(MLF):
    """Leaky integrate-and-fire (eq. 5): an MLF unit with a single threshold."""

    def __init__(
        self,
        threshold: float = 0.6,
        decay: float = DEFAULT_DECAY,
        surrogate: Surrogate | None = None,
    ):
        super().__init__((threshold,), decay, surrogate)


def spiking_neurons(model: nn.Module) -> Iterator[tuple[str, SpikingNeuron]]:
    for name, module in model.named_modules():
        if isinstance(module, SpikingNeuron):
            yield name, module


@contextlib.contextmanager
def use_surrogate(model: nn.Module, surrogate: Surrogate | str) -> Iterator[nn.Module]:
    """Temporarily give every neuron of ``model`` another surrogate gradient."""
    if isinstance(surrogate, str):
        surrogate = get_surrogate(surrogate)
    saved = [(m, m.surrogate) for _, m in spiking_neurons(model)]
    try:
        for m, _ in saved:
            m.surrogate = surrogate
        yield model
    finally:
        for m, old in saved:
            m.surrogate = old


def use_kernels(model: nn.Module, kernels: Kernels | str) -> nn.Module:
    """Gives every neuron of ``model`` the training kernels ``kernels`` ("eager" or
    "compiled"; identical results). Per model: other models keep theirs."""
    chosen = get_kernels(kernels) if isinstance(kernels, str) else kernels
    for _, neuron in spiking_neurons(model):
        neuron.kernels = chosen
    return model
