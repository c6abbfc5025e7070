"""The training path of eq. 6: a forward that keeps the membrane potentials and a
hand-written backward through time (the gradients autograd would give on
``mlf_reference``, reset path included), saving only the potentials.

``Kernels`` pairs a forward with a backward: ``EAGER`` runs them as written; the
``compiled`` kernels are the same functions through ``torch.compile`` (one fused loop per
step instead of a dozen tensor ops: >10x on the neuron's share of a CPU training step;
the first call pays a compile of about half a minute). Each neuron holds its own
(``neurons.use_kernels``), so choosing them for one model changes no other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .dynamics import charge, fire, zero_membrane
from .surrogates import Surrogate


def mlf_forward(x: torch.Tensor, v_th: torch.Tensor, decay: float):
    """Eq. 6 without autograd; returns the output and every membrane potential."""
    u = zero_membrane(x, v_th)
    fired = torch.zeros_like(u)
    potentials, outputs = [], []
    for t in range(x.shape[0]):
        u = charge(u, fired, x[t], decay)
        fired = fire(u, v_th)
        potentials.append(u)
        outputs.append(fired.sum(0))
    return torch.stack(outputs), torch.stack(potentials)


def mlf_backward(
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


@dataclass(frozen=True)
class Kernels:
    name: str
    forward: Callable
    backward: Callable


EAGER = Kernels("eager", mlf_forward, mlf_backward)


@functools.cache
def compiled_kernels() -> Kernels:
    """The compiled pair, made once per process on first use."""
    return Kernels(
        "compiled",
        torch.compile(mlf_forward, dynamic=True),
        torch.compile(mlf_backward, dynamic=True),
    )


def get_kernels(name: str) -> Kernels:
    if name == "eager":
        return EAGER
    if name == "compiled":
        return compiled_kernels()
    raise ValueError(f"unknown kernels {name!r}; choose 'eager' or 'compiled'")


class MLFFunction(torch.autograd.Function):
    """Eq. 6 with the hand-written backward of ``kernels``."""

    @staticmethod
    def forward(ctx, x, v_th, decay, surrogate, kernels: Kernels):
        out, potentials = kernels.forward(x, v_th, decay)
        ctx.save_for_backward(potentials, v_th)
        ctx.decay, ctx.surrogate, ctx.kernels = decay, surrogate, kernels
        return out

    @staticmethod
    def backward(ctx, grad_out):
        potentials, v_th = ctx.saved_tensors
        grad_x = ctx.kernels.backward(grad_out, potentials, v_th, ctx.decay, ctx.surrogate)
        return grad_x, None, None, None, None
