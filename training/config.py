"""The training configuration: ``TrainConfig`` (every setting of a run, saved as its
``config.json``), the command-line flags that fill it, and its one resolution and
validation: dataclass defaults < preset < flags (``config_for``).

A run saved before a field existed compares equal to one with the field's default on
``--resume`` (``runs.prepare_run_dir``), so fields may be added, never renamed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import dataset_info
from .errors import UsageError
from .models import is_classifier, list_models
from .presets import PRESETS, get_preset

# Algorithm 1, line 4: the attacks the purifier trains against (``--attack``); iterative
# ones run ``--attack-steps`` steps of the factory's default step size, 2.5 * eps / steps.
# Gaussian noise's sigma is the attack epsilon.
PURIFIER_ATTACKS = ("fgsm", "pgd", "ifgsm", "gaussian")
# attacks whose output at a per-sample epsilon is exact from one pass: x + eps_i * direction
EPS_RANGE_ATTACKS = frozenset({"fgsm", "gaussian"})
ATTACK_TARGETS = ("classifier", "pipeline")


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as the run's ``config.json``."""

    command: str = "train-classifier"
    name: str = ""
    runs_dir: str = "runs"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "senet18_snn"
    width: int = 64
    timesteps: int = 4
    thresholds: tuple[float, ...] = (0.6, 1.6, 2.6)
    epochs: int = 150
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (80, 120)
    lr_decay: float = 0.1
    schedule: str = "step"  # "step" (x lr_decay at each milestone) or "cosine" (per epoch)
    ols: bool = False
    subset: int | None = None
    val_images: int = 2000
    augment: bool = True
    seed: int = 0
    eval_eps: float = 8 / 255
    # adv-train: PGD adversarial training
    adv_eps: float = 8 / 255
    adv_alpha: float = 2 / 255
    adv_steps: int = 7
    # train-purifier: Algorithm 1
    classifier: str | None = None
    attack: str = "fgsm"
    attack_eps: float | None = None  # default: 2 x eval_eps
    attack_steps: int = 7
    # the shipped purifier's mix (Algorithm 1 has neither: 0 and None): this fraction of each
    # batch stays clean (true noise level 0), and the attacked rest draws its epsilon per
    # sample uniformly from [attack_eps_min, attack_eps]
    clean_fraction: float = 0.0
    attack_eps_min: float | None = None
    # what the training attack differentiates through: the frozen classifier (Algorithm 1)
    # or the whole pipeline with the purifier as it is at that step (the adaptive
    # attacker's view: the purifier learns to undo the attacks aimed at itself)
    attack_target: str = "classifier"
    charbonnier_epochs: int = 100
    beta: float = 0.5
    # execution
    device: str = "auto"
    compile: bool = True
    progress: bool = True
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add("--name", help="run name; the run is written to <runs-dir>/<name>/ (default: derived)")
    add("--runs-dir", help="parent directory of run directories (default: runs)")
    add("--preset", choices=sorted(PRESETS), help="fill in a study's settings (flags override)")
    add("--dataset", help="dataset name (fashion-mnist, mnist, cifar10, cifar100, svhn)")
    add("--data-dir", help="directory holding the dataset's files")
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float, help="learning rate")
    add("--weight-decay", type=float)
    add("--milestones", type=_int_tuple, help="epochs at which the lr decays, e.g. 80,120")
    add(
        "--schedule",
        choices=["step", "cosine"],
        help="lr schedule: step decays at --milestones, cosine anneals to ~0 over --epochs",
    )
    add("--subset", type=int, help="train on N random training images (quick runs)")
    add("--val-images", type=int, help="validation images held out of the training split")
    add("--no-augment", dest="augment", action="store_false", default=None)
    add("--seed", type=int)
    add("--eval-eps", type=float, help="the evaluation epsilon in pixel units (e.g. 0.1)")
    add("--width", type=int, help="base channel width (paper: 64)")
    add("--timesteps", type=int, help="T (paper: 4)")
    add("--thresholds", type=_float_tuple, help="MLF thresholds, e.g. 0.6,1.6,2.6 (K = count)")
    add("--device", choices=["auto", "cpu", "cuda"])
    add("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="compile the neuron kernels with torch.compile (default: on)")  # fmt: skip
    add("--no-progress", dest="progress", action="store_false", default=None)
    add("--resume", action="store_true", help="continue the run in the run directory")
    add("--force", action="store_true", help="move an existing run aside and start over")
    if command in ("train-classifier", "adv-train"):
        add("--model", help=f"classifier from the registry: {', '.join(list_models())}")
        add("--ols", action="store_true", default=None, help="online label smoothing")
    if command == "adv-train":
        add("--adv-eps", type=float, help="PGD epsilon (default: the evaluation epsilon)")
        add("--adv-alpha", type=float, help="PGD step size")
        add("--adv-steps", type=int, help="PGD steps per training batch")
    if command == "train-purifier":
        add("--classifier", help="checkpoint (or run directory) of the frozen classifier")
        add("--attack", choices=sorted(PURIFIER_ATTACKS), help="attack of Algorithm 1, line 4")
        add("--attack-eps", type=float, help="its epsilon (default: 2 x the evaluation epsilon)")
        add("--attack-steps", type=int, help="steps of iterative attacks")
        add(
            "--clean-fraction",
            type=float,
            help="fraction of each batch left clean (noise level 0; default 0, as Algorithm 1)",
        )
        add(
            "--attack-eps-min",
            type=float,
            help="draw each attacked image's epsilon from [this, --attack-eps] (FGSM, gaussian)",
        )
        add(
            "--attack-target",
            choices=list(ATTACK_TARGETS),
            help="what the training attack differentiates through: the frozen classifier "
            "(Algorithm 1, the default) or the pipeline, purifier included (adaptive)",
        )
        add("--charbonnier-epochs", type=int, help="epochs of pure Charbonnier loss first")
        add("--beta", type=float, help="L_rec = beta * Charbonnier + (1 - beta) * L2 afterwards")


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _float_tuple(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Dataclass defaults < preset < explicit flags; validated once, by ``train``."""
    names = {f.name for f in fields(TrainConfig)}
    settings = {
        key: value
        for key, value in vars(args).items()
        if key in names and value is not None and key not in ("command", "preset")
    }
    return config_for(args.command, getattr(args, "preset", None), check=False, **settings)


def config_for(
    command: str, preset: str | None = None, *, check: bool = True, **settings: Any
) -> TrainConfig:
    """The configuration of one training command: dataclass defaults < ``preset`` <
    ``settings``, validated unless ``check`` is false (a plan's cost estimate needs the
    settings of a run whose inputs do not exist yet). The Python API behind the flags."""
    values: dict[str, Any] = {"command": command}
    if preset:
        values.update(get_preset(preset).for_command(command))
        values["preset"] = preset
    values.update(settings)
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise UsageError(f"unknown settings {sorted(unknown)}")
    if command == "adv-train" and "adv_eps" not in settings and not preset:
        values["adv_eps"] = values.get("eval_eps", TrainConfig.eval_eps)
    config = TrainConfig(**values)
    if not config.name:
        config = replace(config, name=default_run_name(config))
    if check:
        validate(config)
    return config


def default_run_name(config: TrainConfig) -> str:
    k = len(config.thresholds)
    if config.command == "train-purifier":
        return f"{config.dataset}-purifier-w{config.width}"
    kind = "adv" if config.command == "adv-train" else ("ols" if config.ols else "std")
    return f"{config.dataset}-{config.model}-w{config.width}-k{k}-{kind}"


def validate(config: TrainConfig) -> None:
    info = _dataset_or_usage(config.dataset)
    if config.command != "train-purifier" and (
        config.model not in list_models() or not is_classifier(config.model)
    ):
        choices = [m for m in list_models() if is_classifier(m)]
        raise UsageError(f"unknown classifier {config.model!r}; choose from {choices}")
    positive = {"epochs": config.epochs, "batch-size": config.batch_size, "width": config.width,
                "timesteps": config.timesteps}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if config.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {config.lr}")
    if config.schedule not in ("step", "cosine"):
        raise UsageError(f"--schedule must be step or cosine, got {config.schedule!r}")
    for name in ("eval_eps", "adv_eps", "adv_alpha"):
        if getattr(config, name) < 0:
            raise UsageError(
                f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}"
            )
    if config.attack_eps is not None and config.attack_eps < 0:
        raise UsageError(f"--attack-eps must be >= 0, got {config.attack_eps}")
    if config.subset is not None and config.subset < 1:
        raise UsageError(f"--subset must be >= 1, got {config.subset}")
    if (
        not config.thresholds
        or any(t <= 0 for t in config.thresholds)
        or list(config.thresholds) != sorted(config.thresholds)
    ):
        raise UsageError(f"--thresholds must be positive and increasing, got {config.thresholds}")
    if not 0 <= config.beta <= 1:
        raise UsageError(f"--beta must be in [0, 1], got {config.beta}")
    if not 0 <= config.clean_fraction < 1:
        raise UsageError(f"--clean-fraction must be in [0, 1), got {config.clean_fraction}")
    if config.attack_eps_min is not None:
        if config.attack not in EPS_RANGE_ATTACKS:
            raise UsageError(
                f"--attack-eps-min works with {sorted(EPS_RANGE_ATTACKS)}, not {config.attack!r}"
            )
        top = config.attack_eps if config.attack_eps is not None else 2 * config.eval_eps
        if not 0 <= config.attack_eps_min <= top:
            raise UsageError(
                f"--attack-eps-min must be in [0, the attack's eps {top:g}], "
                f"got {config.attack_eps_min}"
            )
    if config.attack_target not in ATTACK_TARGETS:
        raise UsageError(f"--attack-target must be one of {ATTACK_TARGETS}")
    if config.attack_target == "pipeline" and config.attack == "gaussian":
        raise UsageError("--attack-target pipeline needs a gradient attack, not gaussian")
    if config.command == "train-purifier":
        if not config.classifier:
            raise UsageError("train-purifier needs --classifier (a checkpoint or run directory)")
        if not Path(config.classifier).exists():
            raise UsageError(f"--classifier {config.classifier}: no such file or directory")
    del info


def _dataset_or_usage(name: str):
    try:
        return dataset_info(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
