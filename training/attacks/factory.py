"""The one way to build an attack: ``build_attack(name, model, Budget(eps, ...))``.

A ``Budget`` says what an attack may spend: the L-inf radius ``eps``, the number of
``steps`` (iterations; queries for Square), the ``step_size``, the number of
``restarts`` and the ``eot_samples`` per gradient (expectation over transformation, for
random pipelines). A field left ``None`` takes the attack's default: the step count of
its paper (``SPECS``), and the step size ``2.5 * eps / steps`` (Madry et al.'s rule: the
steps add up to 2.5 eps, enough to cross the ball from any start, so the attack reaches
the ball's edge at any eps). ``resolve`` fills the defaults in; the resolved budget is
what results record (``Attack.budget``).

The paper's own step sizes are fixed numbers (2/255 for I-FGSM, MI-FGSM, PGD and
BPDA+EOT at eps 8/255; 0.01 for CW) and stated per attack in ``SPECS``; a budget with
``step_size=2/255`` reproduces them. A fixed 2/255 would leave 7 steps short of the
ball's edge at Fashion-MNIST's eps 0.1, a weaker attack than its name says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .base import Attack, Model
from .gradient import BPDAEOT, CW, FGSM, IFGSM, MIFGSM, PGD, GaussianNoise
from .reference import APGD, APGDT, FABT, AutoAttack, Square

DEFAULT_SIGMA = 20 / 255  # the paper's "noise level 20"
STEP_RULE = 2.5  # default step size: STEP_RULE * eps / steps


@dataclass(frozen=True)
class Budget:
    """What an attack may spend; ``None``: the attack's default (module docstring)."""

    eps: float
    steps: int | None = None
    step_size: float | None = None
    restarts: int = 1
    eot_samples: int = 1
    sigma: float | None = None  # Gaussian noise only, its budget in place of eps (20/255)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.eps <= 1:
            problems.append(f"eps must be in [0, 1] (pixel units), got {self.eps}")
        if self.steps is not None and self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if self.step_size is not None and not self.step_size >= 0:
            problems.append(f"step_size must be >= 0, got {self.step_size}")
        if self.restarts < 1 or self.eot_samples < 1:
            problems.append(
                f"restarts and eot_samples must be >= 1, got {self.restarts}, {self.eot_samples}"
            )
        if self.sigma is not None and not self.sigma >= 0:
            problems.append(f"sigma must be >= 0, got {self.sigma}")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes: Any) -> Budget:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Spec:
    """What an attack takes from a budget, and its paper's setting."""

    cls: type[Attack]
    steps: int | None  # the paper's step count; None: not iterative (or fixed, AutoAttack)
    paper_setting: str
    step_size: bool = False  # takes a step size
    random: bool = False  # random start: restarts make sense
    eot: bool = False  # averages gradients over eot_samples draws
    native_restarts: bool = False  # the reference implementation restarts itself


SPECS: dict[str, Spec] = {
    "gaussian": Spec(GaussianNoise, None, "sigma 20/255 (noise level 20)", random=True),
    "fgsm": Spec(FGSM, None, "one step of eps"),
    "ifgsm": Spec(IFGSM, 7, "7 steps of 2/255", step_size=True, eot=True),
    "mifgsm": Spec(MIFGSM, 7, "7 steps of 2/255, decay 1.0", step_size=True, eot=True),
    "pgd": Spec(PGD, 7, "7 steps of 2/255, random start", step_size=True, random=True, eot=True),
    "cw": Spec(CW, 50, "50 steps of 0.01 (lr), kappa 0", step_size=True, eot=True),
    "bpda-eot": Spec(
        BPDAEOT,
        20,
        "BPDA^20: 20 steps of 2/255, random start",
        step_size=True,
        random=True,
        eot=True,
    ),  # fmt: skip
    "apgd-ce": Spec(
        APGD,
        100,
        "100 iterations, 1 restart, rho 0.75",
        random=True,
        eot=True,
        native_restarts=True,
    ),  # fmt: skip
    "apgd-t": Spec(APGDT, 100, "9 target classes x 100 iterations", random=True),
    "fab-t": Spec(FABT, 100, "9 target classes x 100 iterations", random=True),
    "square": Spec(Square, 5000, "5000 queries, p_init 0.8", random=True),
    "autoattack": Spec(AutoAttack, None, "standard version: the four attacks above in turn"),
}


def default_step_size(eps: float, steps: int) -> float:
    """``2.5 * eps / steps``: reaches the ball's edge from any start, at any eps."""
    return STEP_RULE * eps / max(steps, 1)


def resolve(name: str, budget: Budget) -> Budget:
    """``budget`` with the attack's defaults filled in and the fields it does not use
    normalised (``None`` steps and step size, 1 EOT sample), so the result records what
    the attack really spent. Raises ``ValueError`` for a budget the attack cannot take."""
    spec = _spec(name)
    one_fgsm_step = name == "fgsm" and budget.steps == 1
    if spec.steps is None and budget.steps is not None and not one_fgsm_step:
        raise ValueError(f"{name} takes no step count ({spec.paper_setting})")
    if budget.step_size is not None and not spec.step_size:
        raise ValueError(f"{name} takes no step size ({spec.paper_setting})")
    if budget.restarts > 1 and not spec.random:
        raise ValueError(f"{name} is deterministic: restarts must be 1")
    steps = None if spec.steps is None else (spec.steps if budget.steps is None else budget.steps)
    step_size = None
    if spec.step_size:
        given = budget.step_size
        step_size = default_step_size(budget.eps, steps) if given is None else given
    return budget.replace(
        eps=0.0 if name == "gaussian" else budget.eps,
        steps=steps,
        step_size=step_size,
        eot_samples=budget.eot_samples if spec.eot else 1,
        sigma=(budget.sigma or DEFAULT_SIGMA) if name == "gaussian" else None,
    )


def build_attack(
    name: str,
    model: Model | None,
    budget: Budget,
    *,
    stop_when_fooled: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> Attack:
    """The attack ``name`` on ``model`` within ``budget`` (resolved; see ``resolve``).

    ``stop_when_fooled`` freezes a sample once ``model`` misclassifies it (only where
    ``model`` is the model being evaluated); ``generator`` draws the randomness (random
    start, noise) in place of ``seed`` (training passes the epoch's)."""
    spec = _spec(name)
    budget = resolve(name, budget)
    attacks = [
        _make(name, spec, model, budget, stop_when_fooled, seed + r, generator)
        for r in range(1 if spec.native_restarts else budget.restarts)
    ]
    attack = attacks[0] if len(attacks) == 1 else Restarted(attacks)
    attack.budget = budget
    return attack


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One FGSM step of ``eps`` (see ``FGSM``)."""
    return build_attack("fgsm", model, Budget(eps))(x, y)


def pgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float | None,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD returning the last iterate (Madry et al.; what adversarial training uses);
    ``random_start=False`` gives I-FGSM. ``alpha`` None: the default step size.
    ``generator`` draws the random start (default: seed 0)."""
    budget = Budget(eps, steps=steps, step_size=alpha)
    attack = build_attack("pgd" if random_start else "ifgsm", model, budget, generator=generator)
    return attack(x, y)


def _make(name, spec, model, budget, stop_when_fooled, seed, generator) -> Attack:
    cls = spec.cls
    if name == "gaussian":
        return cls(model, budget.sigma, seed=seed, generator=generator)
    if name in ("fgsm", "autoattack"):
        return cls(model, budget.eps, seed=seed)
    if name == "apgd-ce":
        return cls(model, budget.eps, budget.steps, restarts=budget.restarts,
                   eot_samples=budget.eot_samples, seed=seed)  # fmt: skip
    if not spec.step_size:  # apgd-t, fab-t, square: steps (queries) only
        return cls(model, budget.eps, budget.steps, seed=seed)
    return cls(
        model, budget.eps, budget.step_size, budget.steps, eot_samples=budget.eot_samples,
        stop_when_fooled=stop_when_fooled, seed=seed, generator=generator,
    )  # fmt: skip


def _spec(name: str) -> Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(SPECS)}") from None


class Restarted(Attack):
    """Runs its attacks in turn (the same attack, other seeds); each later one attacks
    only the samples that ``model`` still classifies correctly."""

    def __init__(self, attacks: list[Attack]):
        first = attacks[0]
        super().__init__(first.model, first.eps, seed=first.seed)
        self.attacks = attacks
        self.name, self.paper, self.norm = first.name, first.paper, first.norm
        self.uses_gradients = first.uses_gradients

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attacks[0](x, y)
        for attack in self.attacks[1:]:
            with torch.no_grad():
                alive = (self.model(x_adv).argmax(1) == y).nonzero().flatten()
            if alive.numel() == 0:
                break
            x_adv[alive] = attack(x[alive], y[alive])
        return x_adv

    def settings(self) -> dict[str, Any]:
        return {**self.attacks[0].settings(), "restarts": len(self.attacks)}
