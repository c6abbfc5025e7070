"""Sign-gradient L-inf attacks (FGSM family, PGD, CW-loss PGD) and Gaussian noise.

All iterative attacks share one loop (``_SignGradientAttack``): optional random start,
``steps`` updates ``x <- Proj(x + alpha * sign(direction))``, optional momentum. With
``stop_when_fooled`` a sample is frozen at the first iterate that ``model`` misclassifies
and no more gradients are spent on it: use it only when ``model`` is the very model being
evaluated (an early-stopped example crosses the boundary by as little as possible, which
makes it weaker against anything placed after ``model``).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import (
    Attack,
    LossFn,
    Model,
    cross_entropy,
    loss_and_gradient,
    margin_loss,
    project_linf,
    uniform_start,
)

PAPER_STEP_SIZE = 2 / 255
PAPER_STEPS = 7


class GaussianNoise(Attack):
    """Additive Gaussian noise, ``x + N(0, sigma^2)`` clipped to [0, 1] (not an attack on
    the model; the paper's "noise level 20" is ``sigma = 20/255``). ``eps`` is ignored: the
    noise is unbounded, its budget is ``sigma``."""

    name = "gaussian"
    norm = "none"
    paper = "noise robustness test of the paper's Table 2"
    uses_gradients = False

    def __init__(
        self,
        model: Model | None = None,
        sigma: float = 20 / 255,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(model or (lambda x: x), 0.0, seed=seed, generator=generator)
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator(), dtype=x.dtype).to(x.device)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def settings(self) -> dict[str, Any]:
        settings = {k: v for k, v in super().settings().items() if k != "eps"}
        return settings | {"sigma": self.sigma}


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf:
    ``x + eps * sign(grad_x CE)``, one step, clipped to [0, 1]."""

    name = "fgsm"
    paper = "Goodfellow, Shlens, Szegedy. Explaining and harnessing adversarial examples. ICLR 2015"

    def __init__(self, model: Model, eps: float, *, loss_fn: LossFn = cross_entropy, seed: int = 0):
        super().__init__(model, eps, seed=seed)
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        _, _, grad = loss_and_gradient(self.model, x, y, self.loss_fn)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0)


class _SignGradientAttack(Attack):
    random_start = False
    momentum = 0.0

    def __init__(
        self,
        model: Model,
        eps: float,
        alpha: float | None = None,
        steps: int = PAPER_STEPS,
        *,
        loss_fn: LossFn = cross_entropy,
        eot_samples: int = 1,
        stop_when_fooled: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(model, eps, seed=seed, generator=generator)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else self.eps / max(self.steps, 1)
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.loss_fn = loss_fn
        self.eot_samples = int(eot_samples)
        self.stop_when_fooled = stop_when_fooled

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y)

    def run(
        self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attack loop from ``start`` (default: the attack's own random or clean start)."""
        if self.eps == 0 or self.steps == 0:
            return x.clone()
        if start is not None:
            x_adv = project_linf(start.detach().clone(), x, self.eps)
        elif self.random_start:
            x_adv = uniform_start(x, self.eps, self.generator())
        else:
            x_adv = x.clone()
        velocity = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            logits, _, grad = loss_and_gradient(
                self.model, x_adv[active], y[active], self.loss_fn, self.eot_samples
            )
            if self.stop_when_fooled:
                still = logits.argmax(1) == y[active]
                active, grad = active[still], grad[still]
                if active.numel() == 0:
                    break
            direction = grad
            if self.momentum:
                # MI-FGSM: accumulate the L1-normalised gradient (mean |g| per sample);
                # dividing by the max first keeps the mean finite for huge gradients
                peak = grad.abs().flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)
                unit = grad / peak
                scale = unit.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                velocity[active] = self.momentum * velocity[active] + unit / scale
                direction = velocity[active]
            step = x_adv[active] + self.alpha * direction.sign()
            x_adv[active] = project_linf(step, x[active], self.eps)
        return x_adv

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "alpha": self.alpha,
            "steps": self.steps,
            "random_start": self.random_start,
            "momentum": self.momentum,
            "loss": getattr(self.loss_fn, "__name__", repr(self.loss_fn)),
            "eot_samples": self.eot_samples,
            "stop_when_fooled": self.stop_when_fooled,
        }


class IFGSM(_SignGradientAttack):
    """Iterative FGSM / BIM (Kurakin et al. 2017), L-inf: ``steps`` FGSM steps of size
    ``alpha`` (default ``eps / steps``), each projected to the eps ball; no random start.
    The paper runs 7 steps of 2/255 at eps 8/255."""

    name = "ifgsm"
    paper = "Kurakin, Goodfellow, Bengio. Adversarial examples in the physical world. ICLR-W 2017"


class MIFGSM(_SignGradientAttack):
    """Momentum iterative FGSM (Dong et al. 2018), L-inf: I-FGSM on the momentum
    ``g <- decay * g + grad / mean|grad|``; decay 1.0; alpha default ``eps / steps``."""

    name = "mifgsm"
    paper = "Dong et al. Boosting adversarial attacks with momentum. CVPR 2018"

    def __init__(
        self,
        model: Model,
        eps: float,
        alpha: float | None = None,
        steps: int = PAPER_STEPS,
        *,
        decay: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(model, eps, alpha, steps, **kwargs)
        self.momentum = float(decay)


class PGD(_SignGradientAttack):
    """Projected gradient descent (Madry et al. 2018), L-inf, cross-entropy, uniform random
    start in the eps ball. Defaults are the paper's: 7 steps of 2/255."""

    name = "pgd"
    paper = "Madry et al. Towards deep learning models resistant to adversarial attacks. ICLR 2018"
    random_start = True

    def __init__(
        self,
        model: Model,
        eps: float,
        alpha: float | None = PAPER_STEP_SIZE,
        steps: int = PAPER_STEPS,
        **kwargs: Any,
    ):
        super().__init__(model, eps, alpha, steps, **kwargs)


class CW(_SignGradientAttack):
    """Carlini-Wagner loss under an L-inf budget (Carlini & Wagner 2017, the "CW-Linf" of
    Madry et al.): sign-gradient ascent of the margin ``min(max_{j!=y} z_j - z_y, kappa)``
    inside the eps ball, no random start. The paper's setting "lr 0.01, 50 steps" is the
    step size and the number of steps; ``kappa = 0`` is CW's default confidence. This is
    not the unbounded tanh-space CW-L2: its perturbation never leaves the eps ball."""

    name = "cw"
    paper = "Carlini, Wagner. Towards evaluating the robustness of neural networks. IEEE S&P 2017"

    def __init__(
        self,
        model: Model,
        eps: float,
        alpha: float | None = 0.01,
        steps: int = 50,
        *,
        kappa: float = 0.0,
        **kwargs: Any,
    ):
        self.kappa = float(kappa)

        def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return margin_loss(logits, y, self.kappa)

        super().__init__(model, eps, alpha, steps, loss_fn=cw_margin, **kwargs)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "kappa": self.kappa}


class BPDAEOT(PGD):
    """BPDA + EOT (Athalye, Carlini, Wagner 2018): PGD whose ``model`` is a purified pipeline
    with the purifier's backward replaced by the identity (see ``bpda_pipeline``), each
    gradient averaged over ``eot_samples`` draws of the pipeline's randomness. The paper
    reports BPDA^20: 20 steps; step 2/255; random start."""

    name = "bpda-eot"
    paper = (
        "Athalye, Carlini, Wagner. Obfuscated gradients give a false sense of security. ICML 2018"
    )

    def __init__(
        self,
        model: Model,
        eps: float,
        alpha: float | None = PAPER_STEP_SIZE,
        steps: int = 20,
        **kwargs: Any,
    ):
        super().__init__(model, eps, alpha, steps, **kwargs)
