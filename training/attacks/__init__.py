"""Adversarial attacks in pixel space ([0, 1] images), batched and seeded.

Functional API for training code: ``fgsm(model, x, y, eps)`` and
``pgd(model, x, y, eps, alpha, steps, random_start=True, generator=None)``.
Class API for evaluation: ``PGD(model, eps, alpha, steps)(x, y)`` etc.; ``ATTACKS`` maps
the command-line names to the classes.
"""

from .base import Attack, cross_entropy, loss_and_gradient, margin_loss, project_linf
from .gradient import BPDAEOT, CW, FGSM, IFGSM, MIFGSM, PGD, GaussianNoise, fgsm, pgd
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
    "Attack", "AutoAttack", "GaussianNoise", "Square", "cross_entropy", "fgsm",
    "loss_and_gradient", "margin_loss", "pgd", "project_linf",
]  # fmt: skip
