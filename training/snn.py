"""Spiking building blocks: surrogate gradients, LIF (eq. 5) and MLF (eq. 6) neurons.

Tensors are time-major, ``[T, B, ...]``. A neuron's membrane state lives inside ``forward``
and starts from zero on every call, so the same input always gives the same output and
nothing leaks between batches (or between an attack's iterations).

LIF, eq. 5 of the paper (STBP, Wu et al. 2018), with hard reset::

    u[t] = k_tau * u[t-1] * (1 - o[t-1]) + x[t]
    o[t] = H(u[t] - V_th)

MLF, eq. 6 (Feng et al. 2022): K LIF units with thresholds ``V_th = (0.6, 1.6, 2.6)`` share
the input ``x``; each keeps its own membrane and reset; the unit emits the sum of the K
spikes, an integer in ``0..K``.

``H`` has no useful derivative, so backward uses a surrogate. The surrogate is an object
on each neuron and can be swapped (``use_surrogate``): a white-box evaluation attacks with
several shapes and keeps the per-sample worst case.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.6, 1.6, 2.6)
DEFAULT_DECAY = 0.25
DEFAULT_TIMESTEPS = 4


# --------------------------------------------------------------------------- surrogates


class Surrogate:
    """A spike function: Heaviside forward, ``derivative(x)`` backward (x = u - V_th)."""

    name = "surrogate"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return (x >= 0).to(x.dtype)
        return _SpikeFunction.apply(x, self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


@dataclass(repr=False)
class Rectangular(Surrogate):
    """STBP's rectangular window: ``dH/du = (1/a) * 1[|u - V_th| < a/2]`` (a = 1: the paper's)."""

    a: float = 1.0
    name = "rectangular"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() < self.a / 2).to(x.dtype) / self.a


@dataclass(repr=False)
class SigmoidDerivative(Surrogate):
    """``dH/du = alpha * s * (1 - s)`` with ``s = sigmoid(alpha * (u - V_th))``."""

    alpha: float = 4.0
    name = "sigmoid"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)


@dataclass(repr=False)
class ArcTan(Surrogate):
    """``dH/du = (alpha/2) / (1 + (pi/2 * alpha * x)^2)`` (Fang et al. 2021)."""

    alpha: float = 2.0
    name = "arctan"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)


@dataclass(repr=False)
class StraightThrough(Surrogate):
    """Straight-through estimator: the gradient passes unchanged (``dH/du = 1``)."""

    name = "straight-through"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


@dataclass(repr=False)
class NoSurrogate(Surrogate):
    """The true derivative of a step: zero almost everywhere. Used to test that the
    evaluation flags vanishing gradients instead of reporting them as robustness."""

    name = "none"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


SURROGATES: dict[str, Surrogate] = {
    "rect1": Rectangular(1.0),
    "rect0.5": Rectangular(0.5),
    "rect2": Rectangular(2.0),
    "sigmoid4": SigmoidDerivative(4.0),
    "arctan2": ArcTan(2.0),
    "ste": StraightThrough(),
    "none": NoSurrogate(),
}


def get_surrogate(name: str) -> Surrogate:
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; choose from {sorted(SURROGATES)}") from None


# --------------------------------------------------------------------------- neurons


class SpikingNeuron(nn.Module):
    """Base class: charge, fire, reset over a time-major input ``[T, B, ...]``."""

    def __init__(self, decay: float = DEFAULT_DECAY, surrogate: Surrogate | None = None):
        super().__init__()
        self.decay = decay
        self.surrogate = surrogate or Rectangular(1.0)

    @property
    def levels(self) -> int:
        """Largest value one unit can emit per timestep."""
        return 1

    def extra_repr(self) -> str:
        return f"decay={self.decay}, surrogate={self.surrogate!r}"


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
            return _MLFFunction.apply(x, v_th, self.decay, self.surrogate)
        return mlf_reference(x, v_th, self.decay, self.surrogate)

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}, " + super().extra_repr()


def mlf_reference(
    x: torch.Tensor, v_th: torch.Tensor, decay: float, surrogate: Surrogate
) -> torch.Tensor:
    """Eq. 6 written out step by step with plain tensor ops (autograd and ONNX export
    follow it as is). ``v_th`` has shape ``[K, 1, ...]``; ``x`` is ``[T, B, ...]``."""
    u = torch.zeros((v_th.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    spikes = torch.zeros_like(u)
    outputs = []
    for t in range(x.shape[0]):
        u = decay * u * (1 - spikes) + x[t]
        spikes = surrogate(u - v_th)
        outputs.append(spikes.sum(0))
    return torch.stack(outputs)


def _mlf_forward(x: torch.Tensor, v_th: torch.Tensor, decay: float):
    """Eq. 6 without autograd; returns the output and every membrane potential."""
    u = torch.zeros((v_th.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    fired = torch.zeros_like(u)
    potentials, outputs = [], []
    for t in range(x.shape[0]):
        u = decay * u * (1 - fired) + x[t]
        fired = (u >= v_th).to(x.dtype)
        potentials.append(u)
        outputs.append(fired.sum(0))
    return torch.stack(outputs), torch.stack(potentials)


def _mlf_backward(
    grad_out: torch.Tensor,
    potentials: torch.Tensor,
    v_th: torch.Tensor,
    decay: float,
    surrogate: Surrogate,
) -> torch.Tensor:
    """Backward through time of eq. 6, reset path included (as autograd would)."""
    grads = []
    grad_u_next = torch.zeros_like(potentials[0])
    for t in range(potentials.shape[0] - 1, -1, -1):
        u = potentials[t]
        # u[t+1] = decay * u[t] * (1 - o[t]) + x[t+1]; o[t] = H(u[t] - v_th)
        grad_spike = grad_out[t] - decay * grad_u_next * u
        grad_u = grad_spike * surrogate.derivative(u - v_th) + decay * grad_u_next * (u < v_th).to(
            u.dtype
        )
        grads.append(grad_u.sum(0))
        grad_u_next = grad_u
    return torch.stack(grads[::-1])


class _Kernels:
    """Eager by default; ``compile_kernels()`` swaps in ``torch.compile``d versions (one
    fused loop per step instead of a dozen tensor ops: >10x on the neuron's share of a CPU
    training step; the first call pays a compile of about half a minute)."""

    forward = staticmethod(_mlf_forward)
    backward = staticmethod(_mlf_backward)


def compile_kernels(enabled: bool = True) -> None:
    """Use compiled neuron kernels for training (identical results, see tests)."""
    if enabled:
        _Kernels.forward = staticmethod(torch.compile(_mlf_forward, dynamic=True))
        _Kernels.backward = staticmethod(torch.compile(_mlf_backward, dynamic=True))
    else:
        _Kernels.forward = staticmethod(_mlf_forward)
        _Kernels.backward = staticmethod(_mlf_backward)


class _MLFFunction(torch.autograd.Function):
    """Eq. 6 with a hand-written backward through time: the same gradients as autograd on
    ``mlf_reference`` (reset path included), saving only the membrane potentials."""

    @staticmethod
    def forward(ctx, x, v_th, decay, surrogate):
        out, potentials = _Kernels.forward(x, v_th, decay)
        ctx.save_for_backward(potentials, v_th)
        ctx.decay = decay
        ctx.surrogate = surrogate
        return out

    @staticmethod
    def backward(ctx, grad_out):
        potentials, v_th = ctx.saved_tensors
        grad_x = _Kernels.backward(grad_out, potentials, v_th, ctx.decay, ctx.surrogate)
        return grad_x, None, None, None


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


# --------------------------------------------------------------------------- layers


def merge_time(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` -> ``[T*B, ...]`` so that stateless layers run on all steps at once."""
    return x.flatten(0, 1)


def split_time(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    return x.unflatten(0, (timesteps, -1))


class TimeDistributed(nn.Module):
    """Applies a stateless module to every timestep of a ``[T, B, ...]`` tensor at once."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_time(self.module(merge_time(x)), x.shape[0])


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
