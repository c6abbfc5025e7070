"""Defences and the threat models under which they are attacked.

A *defence* is what is evaluated: a classifier, optionally behind a purifier. A *threat
model* says what the attacker differentiates through:

* ``classifier-only`` (the paper's protocol): the attack sees the classifier alone; the
  purifier is applied to the finished adversarial example.
* ``end-to-end``: gradients flow through purifier and classifier (surrogate gradients in
  both) -- what an attacker holding the whole model does.
* ``bpda``: forward through the real pipeline, backward treats the purifier as the
  identity (Athalye et al. 2018); EOT where the pipeline is random.
* ``transfer``: examples crafted white-box on independently trained source models, then
  fed to the defended pipeline (black-box).

For a defence without a purifier the first three coincide (plain white-box); the
evaluation runs that case once under the name ``white-box``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

THREAT_MODELS = ("classifier-only", "end-to-end", "bpda", "transfer")
WHITE_BOX = "white-box"
NOISE = "noise"


class PurifiedClassifier(nn.Module):
    """``classifier(purifier(x)[0])``, differentiable end to end."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x)[0])


class _IdentityBackward(torch.autograd.Function):
    """Forward: the purifier's output. Backward: the incoming gradient unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        return purified

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def bpda_purify(purifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The purified image, with ``d purified / d x`` replaced by the identity (BPDA)."""
    with torch.no_grad():
        purified = purifier(x)[0]
    return _IdentityBackward.apply(x, purified)


class BPDAPipeline(nn.Module):
    """``classifier(purifier(x))`` forward; the purifier is the identity backward, so the
    input gradient is the classifier's gradient at the purified point."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(bpda_purify(self.purifier, x))


@dataclass
class Defence:
    """A named defended pipeline: ``classifier`` alone or behind ``purifier``."""

    name: str
    classifier: nn.Module
    purifier: nn.Module | None = None
    checkpoints: tuple[str, ...] = ()  # roles of its checkpoints, for the result's settings

    @property
    def pipeline(self) -> nn.Module:
        if self.purifier is None:
            return self.classifier
        return PurifiedClassifier(self.purifier, self.classifier)

    def attacked_model(self, threat: str) -> nn.Module:
        """The model the attacker differentiates under ``threat`` (not for ``transfer``,
        whose attacked models are the source models)."""
        if threat == WHITE_BOX or self.purifier is None:
            if threat not in (WHITE_BOX, *THREAT_MODELS[:3]):
                raise ValueError(f"no attacked model of {self.name!r} under {threat!r}")
            return self.classifier
        if threat == "classifier-only":
            return self.classifier
        if threat == "end-to-end":
            return PurifiedClassifier(self.purifier, self.classifier)
        if threat == "bpda":
            return BPDAPipeline(self.purifier, self.classifier)
        raise ValueError(f"no attacked model of {self.name!r} under {threat!r}")

    def canonical_threat(self, threat: str, attack_uses_model: bool = True) -> str:
        """The threat model a run is filed under: attacks that ignore the model are
        ``noise``; without a purifier the three white-box threat models are one."""
        if threat in (WHITE_BOX, NOISE):
            return threat
        if threat not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {threat!r}; choose from {THREAT_MODELS}")
        if not attack_uses_model:
            return NOISE
        if self.purifier is None and threat != "transfer":
            return WHITE_BOX
        return threat

    def matches_attacked(self, threat: str) -> bool:
        """Whether the attacked model's forward pass is the defended pipeline itself, so
        an attack may stop on a sample as soon as it is misclassified."""
        return threat in (WHITE_BOX, "end-to-end", "bpda")


@torch.no_grad()
def is_random(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two forward passes on the same input differ (EOT is then needed)."""
    return not torch.equal(model(x), model(x))
