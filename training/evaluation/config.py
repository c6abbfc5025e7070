"""``SuiteConfig``: everything an evaluation needs, validated once; the command line is
generated from its fields (``cli.py``), so a setting and its flag are declared together.

Attack budgets: ``eps`` and ``steps`` (PGD's step counts) span the grid; ``step_size``,
``restarts``, ``eot_samples`` and ``sigma`` apply to every attack that takes them, and
``budgets`` overrides any field per attack (``--budget cw.steps=100``). What is left
unset takes the attack's default (``training.attacks.factory``): its paper's step count
and the step size ``2.5 * eps / steps``, which reaches the ball's edge at any eps.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..attacks import ATTACKS, SPECS, Budget, resolve
from ..errors import UsageError
from ..snn import SURROGATES
from ..threat_models import THREAT_MODELS
from .engine import DEFAULT_SURROGATES

DEFAULT_ATTACKS = ("gaussian", "fgsm", "ifgsm", "mifgsm", "pgd", "cw")
BUDGET_FIELDS = ("steps", "step_size", "restarts", "eot_samples", "sigma")


def pixels(text: str) -> float:
    """A float in pixel units; ``8/255`` style fractions are accepted too."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def step_size_or_auto(text: str) -> float | None:
    return None if text == "auto" else pixels(text)


def budget_item(text: str) -> tuple[str, str, float]:
    """``ATTACK.FIELD=VALUE``, e.g. ``cw.steps=100`` or ``pgd.step_size=2/255``."""
    try:
        target, value = text.split("=", 1)
        attack, name = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ATTACK.FIELD=VALUE, got {text!r}") from None
    if name not in BUDGET_FIELDS:
        raise argparse.ArgumentTypeError(f"{name!r} is not a budget field {BUDGET_FIELDS}")
    return attack, name, pixels(value)


def cli(help: str, **argparse_options: Any) -> dict[str, Any]:
    """A field's command-line option: ``help`` plus argparse's keywords (``flags`` for
    the option strings, default ``--<name>``)."""
    return {"cli": {"help": help, **argparse_options}}


@dataclass
class SuiteConfig:
    """Everything ``run_suite`` needs; ``python -m training evaluate`` fills one."""

    classifier: str = field(metadata=cli("classifier checkpoint (.safetensors or run dir)"))
    purifier: str | None = field(default=None, metadata=cli("adds the 'purifier' defence"))
    adv_classifier: str | None = field(
        default=None, metadata=cli("adversarially trained classifier: adds 'adv-training'")
    )
    ols_classifier: str | None = field(
        default=None, metadata=cli("OLS-trained classifier: adds 'purifier+ols'")
    )
    sources: Sequence[str] = field(default=(), metadata=cli(
        "independently trained transfer source for the transfer threat model (repeatable)",
        flags=("--source", "--surrogate"), action="append", metavar="CHECKPOINT"))  # fmt: skip
    attacks: Sequence[str] = field(default=DEFAULT_ATTACKS, metadata=cli(
        f"attacks to run, of {sorted(ATTACKS)}", metavar="ATTACK"))  # fmt: skip
    eps: Sequence[float] = field(default=(8 / 255,), metadata=cli(
        "L-inf budgets in pixel units (0.0314 or 8/255)", type=pixels))  # fmt: skip
    steps: Sequence[int] = field(default=(SPECS["pgd"].steps,), metadata=cli(
        "PGD step counts (the other attacks: --budget ATTACK.steps=N)", type=int))  # fmt: skip
    threat_models: Sequence[str] = field(default=THREAT_MODELS, metadata=cli(
        f"threat models, of {' '.join(THREAT_MODELS)} (command line default: all, transfer "
        "only with --source)", metavar="THREAT", default=None))  # fmt: skip
    surrogates: Sequence[str] = field(default=DEFAULT_SURROGATES, metadata=cli(
        f"surrogate gradient shapes of the per-sample worst case, of {sorted(SURROGATES)}",
        flags=("--surrogate-gradients",), metavar="NAME"))  # fmt: skip
    n: int = field(default=1000, metadata=cli("test images (random subset)", flags=("-n",)))
    dataset: str | None = field(default=None, metadata=cli("when the checkpoint names none"))
    data_dir: str | None = field(default=None, metadata=cli("dataset directory"))
    seed: int = field(default=0, metadata=cli("seed of the image subset and of the attacks"))
    batch_size: int = field(default=100, metadata=cli("images per batch"))
    compile: bool = field(default=False, metadata=cli(
        "run the neurons the attacks differentiate through on the torch.compile kernels "
        "(the training path's; ~1.8x faster attacks on CPU after a compile of about half a "
        "minute per surrogate shape; results keep their file names)"))  # fmt: skip
    device: str = field(default="cpu", metadata=cli("torch device"))
    out: str | None = field(default=None, metadata=cli("output directory (results/<name>)"))
    name: str | None = field(default=None, metadata=cli("default: the classifier's run dir"))
    force: bool = field(default=False, metadata=cli("recompute results that already exist"))
    step_size: float | None = field(default=None, metadata=cli(
        "step size of the attacks that take one ('auto', the default: 2.5*eps/steps; the "
        "paper's: 2/255)", flags=("--step-size", "--alpha"), type=step_size_or_auto))  # fmt: skip
    restarts: int = field(default=1, metadata=cli("restarts of the attacks with a random part"))
    sigma: float = field(default=20 / 255, metadata=cli("Gaussian noise sigma", type=pixels))
    eot_samples: int = field(
        default=10,
        metadata=cli(
            "EOT samples per gradient when a pipeline is random (a deterministic one uses 1)"
        ),
    )
    budgets: Mapping[str, Mapping[str, float]] = field(default_factory=dict, metadata=cli(
        "one attack's budget field (steps, step_size, restarts, eot_samples, sigma), "
        "e.g. cw.steps=100 (repeatable)", flags=("--budget",), action="append",
        type=budget_item, metavar="ATTACK.FIELD=VALUE"))  # fmt: skip
    sanity: bool = field(default=True, metadata=cli(
        "skip the large-eps sanity runs (PGD-20 at eps 0.5 per threat model); the checks on "
        "the results themselves (monotone in eps and steps, transfer weaker than white-box, "
        "gradients finite and non-zero) always run", flags=("--no-sanity",)))  # fmt: skip
    # more defences by name: (classifier checkpoint, purifier checkpoint or None), e.g. a
    # second purifier or a purifier in front of the adversarially trained classifier
    extra_defences: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    # evaluate only these defences (by name; empty: all of them)
    only_defences: Sequence[str] = ()

    def budget(self, attack: str, eps: float, steps: int | None, purpose: str) -> Budget:
        """The budget of one planned setting. ``steps`` is the grid's (PGD) or None; the
        large-eps sanity runs use the default step size whatever ``step_size`` says."""
        spec = SPECS[attack]
        values: dict[str, Any] = {
            "steps": steps,
            "step_size": self.step_size if spec.step_size and purpose == "table" else None,
            "restarts": self.restarts if spec.random else 1,
            "eot_samples": self.eot_samples,
            "sigma": self.sigma if attack == "gaussian" else None,
        }
        values.update(self.budgets.get(attack, {}))
        for name in ("steps", "restarts", "eot_samples"):
            if values[name] is not None:
                values[name] = int(values[name])
        return Budget(eps, **values)


def validate(config: SuiteConfig) -> None:
    """Raises ``UsageError`` naming the first bad setting."""
    unknown = [a for a in config.attacks if a not in ATTACKS]
    if unknown or not config.attacks:
        raise UsageError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}")
    bad = [t for t in config.threat_models if t not in THREAT_MODELS]
    if bad or not config.threat_models:
        raise UsageError(f"unknown threat model(s) {bad}; choose from {list(THREAT_MODELS)}")
    bad = [s for s in config.surrogates if s not in SURROGATES]
    if bad or not config.surrogates:
        raise UsageError(f"unknown surrogate gradient(s) {bad}; choose from {sorted(SURROGATES)}")
    if not config.eps or any(not 0 <= e <= 1 for e in config.eps):
        raise UsageError(f"--eps values must be in [0, 1] (pixel units), got {list(config.eps)}")
    if not config.steps or any(s < 0 for s in config.steps):
        raise UsageError(f"--steps values must be >= 0, got {list(config.steps)}")
    for name, value in (("-n", config.n), ("--batch-size", config.batch_size)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if set(config.budgets) - set(ATTACKS):
        raise UsageError(f"--budget names unknown attack(s) {sorted(set(config.budgets))}")
    for attack in config.attacks:
        for steps in config.steps if attack == "pgd" else (None,):
            try:
                resolve(attack, config.budget(attack, config.eps[0], steps, "table"))
            except ValueError as exc:
                raise UsageError(f"{attack}: {exc}") from None
    if "transfer" in config.threat_models and not config.sources:
        raise UsageError("the transfer threat model needs --source (a transfer source model)")
    if config.ols_classifier and not config.purifier:
        raise UsageError("--ols-classifier is evaluated behind the purifier: give --purifier")


def command_line_fields() -> list:
    return [f for f in fields(SuiteConfig) if "cli" in f.metadata]
