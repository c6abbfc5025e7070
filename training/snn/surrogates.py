"""Surrogate gradients: the spike function is a Heaviside step forward and ``derivative``
backward. ``SURROGATES`` names the shapes an evaluation attacks with (a sample counts as
robust only if it survives all of them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
