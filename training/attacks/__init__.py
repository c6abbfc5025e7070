"""Adversarial attacks in pixel space ([0, 1] images), batched and seeded.

Build them with ``build_attack(name, model, Budget(eps, steps=..., step_size=...,
restarts=..., eot_samples=...))`` (``factory.py``): each attack's defaults come from its
paper, the default step size reaches the ball's edge at any eps, and the resolved budget
is recorded in the attack's ``settings()``. ``ATTACKS`` maps the command-line names to the
classes (``base.py``: the interface and losses; ``gradient.py``: the sign-gradient family;
``reference.py``: APGD, FAB, Square, AutoAttack from the reference code).
"""

from .base import Attack, cross_entropy, loss_and_gradient, margin_loss, project_linf
from .factory import SPECS, Budget, build_attack, default_step_size, fgsm, pgd, resolve
from .gradient import BPDAEOT, CW, FGSM, IFGSM, MIFGSM, PGD, GaussianNoise
from .reference import APGD, APGDT, FABT, AutoAttack, Square

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        GaussianNoise,
        FGSM,
        IFGSM,
        MIFGSM,
        PGD,
        CW,
        APGD,
        APGDT,
        FABT,
        Square,
        AutoAttack,
        BPDAEOT,
    )  # fmt: skip
}

__all__ = [
    "APGD", "APGDT", "ATTACKS", "BPDAEOT", "CW", "FABT", "FGSM", "IFGSM", "MIFGSM", "PGD",
    "SPECS", "Attack", "AutoAttack", "Budget", "GaussianNoise", "Square", "build_attack",
    "cross_entropy", "default_step_size", "fgsm", "loss_and_gradient", "margin_loss", "pgd",
    "project_linf", "resolve",
]  # fmt: skip
