"""APGD, FAB, Square and AutoAttack from the reference implementation (Croce & Hein's
code, packaged on PyPI as ``pyautoattack``; version and hash pinned in pyproject's
``train`` extra), wrapped in the ``Attack`` interface.

The reference seeds the global RNG; the wrappers run it inside ``torch.random.fork_rng``
so calling an attack leaves the caller's random state untouched. The reference attacks
return the adversarial example only for samples they fooled (the clean image otherwise)
and skip samples that are already misclassified.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from .base import Attack, Model

LOGGER = logging.getLogger("auto-attack")


def _reference() -> SimpleNamespace:
    from pyautoattack.autoattack import AutoAttack as ReferenceAutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    return SimpleNamespace(
        APGDAttack=APGDAttack,
        APGDAttack_targeted=APGDAttack_targeted,
        FABAttack_PT=FABAttack_PT,
        SquareAttack=SquareAttack,
        AutoAttack=ReferenceAutoAttack,
    )


def _isolated_rng(x: torch.Tensor, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        return fn()


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020), L-inf, untargeted, step-size free; ``loss`` "ce"
    (APGD-CE, the default) or "dlr". Reference defaults: 100 iterations, 1 restart,
    rho 0.75; ``eot_samples`` averages gradients over random pipelines."""

    name = "apgd-ce"
    paper = "Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks. ICML 2020"  # noqa: E501

    def __init__(
        self,
        model: Model,
        eps: float,
        steps: int = 100,
        *,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        eot_samples: int = 1,
        seed: int = 0,
    ):
        super().__init__(model, eps, seed=seed)
        if steps < 0 or restarts < 1 or eot_samples < 1:
            raise ValueError("steps must be >= 0, restarts and eot_samples >= 1")
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.steps, self.restarts, self.loss, self.rho = int(steps), restarts, loss, rho
        self.eot_samples = eot_samples
        self.name = f"apgd-{loss}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or self.steps == 0:
            return x.clone()
        attack = _reference().APGDAttack(
            self.model,
            n_iter=self.steps,
            norm="Linf",
            n_restarts=self.restarts,
            eps=self.eps,
            seed=self.seed,
            loss=self.loss,
            eot_iter=self.eot_samples,
            rho=self.rho,
            device=x.device,
            logger=LOGGER,
        )
        return _isolated_rng(x, lambda: attack.perturb(x, y))

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "rho": self.rho,
            "eot_samples": self.eot_samples,
        }


class _Targeted(Attack):
    """The reference's targeted attacks: ``steps`` iterations against each of the
    ``n_target_classes`` most likely wrong classes, 1 restart."""

    def __init__(
        self,
        model: Model,
        eps: float,
        steps: int = 100,
        *,
        n_target_classes: int = 9,
        seed: int = 0,
    ):
        super().__init__(model, eps, seed=seed)
        self.steps, self.n_target_classes = int(steps), int(n_target_classes)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "steps": self.steps,
            "n_target_classes": self.n_target_classes,
        }


class APGDT(_Targeted):
    """Targeted APGD on the DLR loss (APGD-T of AutoAttack), L-inf: 100 iterations for
    each of the ``n_target_classes`` (9) most likely wrong classes, 1 restart."""

    name = "apgd-t"
    paper = APGD.paper

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or self.steps == 0:
            return x.clone()
        attack = _reference().APGDAttack_targeted(
            self.model,
            n_iter=self.steps,
            norm="Linf",
            n_restarts=1,
            eps=self.eps,
            seed=self.seed,
            n_target_classes=self.n_target_classes,
            device=x.device,
            logger=LOGGER,
        )
        return _isolated_rng(x, lambda: attack.perturb(x, y))


class FABT(_Targeted):
    """Targeted FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a
    fast adaptive boundary attack"), L-inf, as in AutoAttack: 100 iterations for each of
    the 9 most likely wrong classes, 1 restart; only examples within ``eps`` count."""

    name = "fab-t"
    paper = "Croce, Hein. Minimally distorted adversarial examples with a fast adaptive boundary attack. ICML 2020"  # noqa: E501

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or self.steps == 0:
            return x.clone()
        attack = _reference().FABAttack_PT(
            self.model,
            norm="Linf",
            n_restarts=1,
            n_iter=self.steps,
            eps=self.eps,
            seed=self.seed,
            targeted=True,
            device=x.device,
            n_target_classes=self.n_target_classes,
        )
        return _isolated_rng(x, lambda: attack.perturb(x, y))


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), L-inf, score-based black-box on the
    margin loss: 5000 queries, p_init 0.8, 1 restart (AutoAttack's standard setting)."""

    name = "square"
    paper = "Andriushchenko et al. Square attack: a query-efficient black-box adversarial attack via random search. ECCV 2020"  # noqa: E501
    uses_gradients = False

    def __init__(
        self, model: Model, eps: float, queries: int = 5000, *, p_init: float = 0.8, seed: int = 0
    ):
        super().__init__(model, eps, seed=seed)
        self.queries, self.p_init = int(queries), float(p_init)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or self.queries == 0:
            return x.clone()
        attack = _reference().SquareAttack(
            self.model,
            norm="Linf",
            n_queries=self.queries,
            eps=self.eps,
            p_init=self.p_init,
            n_restarts=1,
            seed=self.seed,
            device=x.device,
            resc_schedule=False,
        )
        return _isolated_rng(x, lambda: attack.perturb(x, y))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "queries": self.queries, "p_init": self.p_init}


class _CascadeTally(logging.Handler):
    """The samples each component of the reference cascade fooled, read from the line it
    logs per batch of survivors ("apgd-t - 1/1 - 3 out of 17 successfully perturbed"); its
    warnings (Square fooling what the white-box attacks could not) are kept to pass on."""

    LINE = re.compile(r"^([a-z-]+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed$")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fooled: Counter = Counter()
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = self.LINE.match(message)
        if match:
            self.fooled[match[1]] += int(match[2])
        elif record.levelno >= logging.WARNING:
            self.warnings.append(message)


class AutoAttack(Attack):
    """Standard AutoAttack (Croce & Hein 2020), L-inf, the reference cascade at full
    budget: APGD-CE (100 it.), APGD-T (9 targets x 100 it.), FAB-T (9 x 100 it.), Square
    (5000 queries); each attack runs only on the samples all earlier ones failed on.

    ``black_box=False`` runs the three white-box attacks only: the evaluation engine runs
    the whole cascade with the first surrogate gradient and again, without Square, with
    each further one on the survivors (Square needs no gradient; its 5,000 queries once are
    the standard budget, a rerun per surrogate would only add restarts of it).

    After a call ``fooled_by_stage`` counts the samples each component fooled (as the
    attacked model judges them): Square fooling any after the three white-box attacks is
    the reference's own sign that their gradients were masked."""

    name = "autoattack"
    paper = APGD.paper
    WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")

    def __init__(
        self,
        model: Model,
        eps: float,
        *,
        version: str = "standard",
        black_box: bool = True,
        seed: int = 0,
    ):
        super().__init__(model, eps, seed=seed)
        self.version, self.black_box = version, black_box

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        attack = _reference().AutoAttack(
            self.model,
            eps=self.eps,
            norm="Linf",
            version=self.version,
            seed=self.seed,
            device=x.device,
        )
        if not self.black_box:  # the standard components' settings, Square left out
            attack.attacks_to_run = [a for a in attack.attacks_to_run if a in self.WHITE_BOX]

        def run() -> torch.Tensor:
            x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=x.shape[0])
            return x_adv

        tally = _CascadeTally()
        level, propagate = LOGGER.level, LOGGER.propagate
        LOGGER.addHandler(tally)
        LOGGER.setLevel(logging.DEBUG)
        LOGGER.propagate = False  # its debug lines are for the tally only
        try:
            x_adv = _isolated_rng(x, run)
        finally:
            LOGGER.removeHandler(tally)
            LOGGER.setLevel(level)
            LOGGER.propagate = propagate
        for warning in tally.warnings:
            LOGGER.warning(warning)
        self.fooled_by_stage = tally.fooled
        return x_adv

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "version": self.version,
            "components": "apgd-ce(100) apgd-t(9x100) fab-t(9x100) square(5000)",
            "square": "with the first surrogate gradient only",
        }
