"""Shared machinery of the attacks: the ``Attack`` base class, losses, projection and the
input gradient (with expectation over transformation for random pipelines).

Every attack works in pixel space: inputs and outputs are images in [0, 1], ``[B, C, H, W]``;
``model`` is any callable from such images to logits. Attacks never change the model's
train/eval mode and never touch the global random state: randomness comes from a
``torch.Generator`` seeded with ``seed``, so a call is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y``, capped at ``kappa`` (per sample).

    Positive once the sample is misclassified; with ``kappa = 0`` (CW's default confidence)
    the attack stops pushing a sample as soon as it crosses the decision boundary."""
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    margin = others.amax(1) - correct
    return margin.clamp(max=kappa) if kappa != float("inf") else margin


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Projects onto the L-inf ball of radius ``eps`` around ``x`` intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the eps ball (clipped to [0, 1]); drawn on the CPU so the
    same seed gives the same start on every device."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + eps * (2 * noise - 1)).clamp(0.0, 1.0)


def loss_and_gradient(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = cross_entropy,
    eot_samples: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(logits, per-sample loss, d loss / d x)``.

    With ``eot_samples > 1`` all three are averaged over that many forward/backward passes
    (expectation over transformation, Athalye et al. 2018): only meaningful when the model
    is random. Only the input gradient is computed, never the parameters' (no ``.grad`` is
    written). NaN entries are zeroed and infinite ones clipped to the largest float (their
    sign survives), so no attack ever produces NaN; the evaluation's sanity checks report
    non-finite raw gradients separately."""
    grad = torch.zeros_like(x)
    logits_sum: torch.Tensor | None = None
    loss_sum = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for _ in range(max(1, eot_samples)):
        with torch.enable_grad():
            x_var = x.detach().clone().requires_grad_(True)
            logits = model(x_var)
            loss = loss_fn(logits, y)
            if loss.dim() == 0:
                loss = loss.expand(x.shape[0])
            (g,) = torch.autograd.grad(loss.sum(), x_var)
        grad += g
        loss_sum += loss.detach()
        logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
    n = max(1, eot_samples)
    assert logits_sum is not None
    return logits_sum / n, loss_sum / n, torch.nan_to_num(grad / n, nan=0.0)


class Attack:
    """Base class: ``attack(x, y)`` returns adversarial images in [0, 1].

    Subclasses set ``name``, ``paper`` and ``norm`` and implement ``forward``; ``settings()``
    lists every knob that sets the attack's strength, so reports state the true budget.
    Build attacks with ``build_attack`` (``factory.py``), which resolves a ``Budget``.
    """

    name = "attack"
    norm = "Linf"
    paper = ""
    uses_gradients = True
    budget: Any = None  # the resolved ``Budget`` when ``build_attack`` made the attack

    def __init__(
        self, model: Model, eps: float, *, seed: int = 0, generator: torch.Generator | None = None
    ):
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.seed = int(seed)
        self._generator = generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"expected images [B, C, H, W] and labels [B], got {x.shape}, {y.shape}"
            )
        x = x.detach()
        if x.numel() == 0:
            return x.clone()
        x_adv = self.forward(x, y.detach())
        return x_adv.detach()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def generator(self) -> torch.Generator:
        """The attack's randomness: the generator it was given (training passes the epoch's,
        and each call draws on from it), else a fresh one seeded with ``seed``. The
        reference attacks (``reference.py``) take ``seed`` only."""
        if self._generator is not None:
            return self._generator
        return torch.Generator().manual_seed(self.seed)

    def settings(self) -> dict[str, Any]:
        """The attack's full configuration as JSON-ready values (with the budget it was
        built with, when ``build_attack`` built it)."""
        out = {"attack": self.name, "norm": self.norm, "eps": self.eps, "seed": self.seed}
        if self.budget is not None:
            out["budget"] = self.budget.to_json()
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.settings().items() if k != "attack")
        return f"{type(self).__name__}({args})"
