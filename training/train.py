"""Training commands: ``train-classifier`` (STBP), ``adv-train`` (PGD adversarial training,
Madry et al. 2018: the baseline the paper compares against) and ``train-purifier``
(Algorithm 1 of the paper).

Algorithm 1, per batch: attack the frozen classifier (FGSM at twice the evaluation epsilon
by default), feed the adversarial image to the purifier, and minimise eq. 10 —
``L_rec + 0.5 * L_asym + 0.05 * L_tv`` — where ``L_rec`` is pure Charbonnier for the first
``charbonnier_epochs`` epochs and ``beta * Charbonnier + (1 - beta) * L2`` after.

The *true noise level* that the noise-extraction network learns to predict is the per-pixel
magnitude of the perturbation the attack actually added, ``sigma = |x_adv - x|``. For an
L-inf attack this is epsilon wherever the perturbation was not clipped by the [0, 1] pixel
range and smaller where it was (e.g. on Fashion-MNIST's black background, where FGSM's
negative steps vanish), so the map tells the non-blind denoiser exactly where and how much
to remove — the role CBDNet's noise-level map plays for camera noise.

Runs are deterministic given ``--seed``: every epoch draws its shuffling, augmentation and
attack randomness from a generator seeded by (seed, epoch), so a resumed run continues
exactly as an uninterrupted one. Under ``torchrun`` the same commands train with
DistributedDataParallel (gloo on CPU, nccl on GPU); each rank takes every world-size-th
sample of the epoch's permutation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import runs
from .checkpoint import load_model, load_training_state, save_checkpoint
from .data import DatasetNotFoundError, Split, augment, batches, dataset_info, load_split
from .errors import UsageError
from .losses import OnlineLabelSmoothing, PurifierLossWeights, purifier_loss
from .models import create_model, is_classifier, list_models
from .presets import PRESETS, get_preset
from .snn import compile_kernels

VALIDATION_SIZE = 5000  # held out from the training split; the test split is never used here


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
    charbonnier_epochs: int = 100
    beta: float = 0.5
    # execution
    device: str = "auto"
    compile: bool = True
    progress: bool = True
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- command line


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
        add("--charbonnier-epochs", type=int, help="epochs of pure Charbonnier loss first")
        add("--beta", type=float, help="L_rec = beta * Charbonnier + (1 - beta) * L2 afterwards")


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _float_tuple(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Dataclass defaults < preset < explicit flags."""
    names = {f.name for f in fields(TrainConfig)}
    settings = {
        key: value
        for key, value in vars(args).items()
        if key in names and value is not None and key not in ("command", "preset")
    }
    return config_for(args.command, getattr(args, "preset", None), **settings)


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
    config = TrainConfig(**values)
    if command == "adv-train" and "adv_eps" not in settings and not preset:
        config.adv_eps = config.eval_eps
    if not config.name:
        config.name = default_run_name(config)
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


# --------------------------------------------------------------------------- environment


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (convolutions and matmuls; the neurons' comparisons stay in the
    tensors' dtype); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    train: Split
    val: Split
    info: Any


def load_data(config: TrainConfig) -> Data:
    info = dataset_info(config.dataset)
    full = load_split(config.dataset, train=True, data_dir=config.data_dir)
    # a fixed validation split carved off the training data (seeded independently of --seed,
    # so runs with different seeds select on the same images)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(12345))
    n_val = min(VALIDATION_SIZE, len(full) // 10)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = Split(full.images[train_idx], full.labels[train_idx]).subset(config.subset, config.seed)
    val = Split(full.images[val_idx], full.labels[val_idx]).first(min(config.val_images, n_val))
    return Data(train, val, info)


def epoch_batches(
    data: Data, config: TrainConfig, epoch: int, dist: Distributed, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(data.train), generator=gen)
    # equal shard sizes on every rank keep DDP's collective calls in step
    per_rank = len(order) // dist.world_size
    shard = order[dist.rank :: dist.world_size][:per_rank]
    for x, y in batches(data.train, config.batch_size, shuffle=False, indices=shard):
        if config.augment:
            x = augment(x, data.info.hflip, gen)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def batches_per_epoch(data: Data, config: TrainConfig, dist: Distributed) -> int:
    return math.ceil((len(data.train) // dist.world_size) / config.batch_size)


# --------------------------------------------------------------------------- models


def build_classifier(config: TrainConfig, info) -> nn.Module:
    return create_model(
        config.model,
        width=config.width,
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        timesteps=config.timesteps,
        thresholds=list(config.thresholds),
        mean=list(info.mean),
        std=list(info.std),
    )


def build_purifier(config: TrainConfig, info) -> nn.Module:
    return create_model(
        "purifier",
        width=config.width,
        in_channels=info.in_channels,
        timesteps=config.timesteps,
        thresholds=list(config.thresholds),
    )


@torch.no_grad()
def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    device: torch.device,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Top-1 accuracy in percent; ``transform(x, y)`` (e.g. an attack) runs first, with
    gradients enabled."""
    correct = 0
    for x, y in batches(split, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        if transform is not None:
            with torch.enable_grad():
                x = transform(x, y)
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / max(len(split), 1)


def param_digest(model: nn.Module) -> str:
    """Hash of the trainable weights (BatchNorm's running statistics are per-rank buffers:
    DDP re-broadcasts them from rank 0 before each forward, and checkpoints store rank 0's)."""
    h = hashlib.sha256()
    for _, value in sorted(getattr(model, "module", model).named_parameters()):
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- attacks


def _fgsm(model, x, y, eps, steps, gen):
    from .attacks import fgsm

    return fgsm(model, x, y, eps)


def _pgd(model, x, y, eps, steps, gen):
    from .attacks import pgd

    return pgd(model, x, y, eps, alpha=2.5 * eps / max(steps, 1), steps=steps, generator=gen)


def _ifgsm(model, x, y, eps, steps, gen):
    from .attacks import pgd

    return pgd(model, x, y, eps, alpha=eps / max(steps, 1), steps=steps, random_start=False)


def _gaussian(model, x, y, eps, steps, gen):
    noise = torch.randn(x.shape, generator=gen).to(x.device) * eps
    return (x + noise).clamp(0, 1)


PURIFIER_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": _fgsm,
    "pgd": _pgd,
    "ifgsm": _ifgsm,
    "gaussian": _gaussian,
}
# attacks whose output at a per-sample epsilon is exact from one pass: x + eps_i * direction
EPS_RANGE_ATTACKS = frozenset({"fgsm", "gaussian"})


def mixed_purifier_batch(
    attack: Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    gen: torch.Generator,
    *,
    clean_fraction: float = 0.0,
    eps_min: float | None = None,
) -> torch.Tensor:
    """The purifier's training input: ``attack`` at ``eps`` (Algorithm 1, line 4) or, with
    ``eps_min``, at a per-sample epsilon drawn uniformly from ``[eps_min, eps]``; then the
    first ``clean_fraction`` of the (already shuffled) batch is left clean.

    A per-sample epsilon is exact for FGSM, whose output is ``clip(x + eps * sign(g))``: the
    sign is taken once from a unit-epsilon step (a pixel at the box edge that the step
    cannot move gets 0 either way), and for Gaussian noise, whose sample scales with eps."""
    if eps_min is None:
        x_adv = attack(model, x, y, eps, steps, gen)
    else:
        if attack not in (_fgsm, _gaussian):
            raise ValueError("a per-sample epsilon needs FGSM or Gaussian noise")
        lo = torch.full((len(x),), float(eps_min))
        eps_i = (lo + torch.rand(len(x), generator=gen) * (eps - eps_min)).to(x.device)
        if attack is _gaussian:  # a standard normal sample, scaled per sample below
            direction = torch.randn(x.shape, generator=gen).to(x.device)
        else:
            direction = (attack(model, x, y, 1.0, steps, gen) - x).sign()
        x_adv = (x + eps_i.view(-1, *[1] * (x.dim() - 1)) * direction).clamp(0, 1)
    n_clean = int(round(clean_fraction * len(x)))
    if n_clean:
        x_adv = torch.cat([x[:n_clean], x_adv[n_clean:]])
    return x_adv.detach()


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Shared epoch loop: resume, checkpoints (latest every epoch, best by validation
    score), metrics log, progress bar, DDP. Subclasses provide ``train_step`` and
    ``validate``."""

    score_name = "val_acc"

    def __init__(self, config: TrainConfig, device: torch.device, dist: Distributed):
        self.config = config
        self.device = device
        self.dist = dist
        self.run_dir = Path(config.runs_dir) / config.name
        self.data = load_data(config)
        self.extra_modules: dict[str, nn.Module] = {}
        self.meta_extra: dict[str, Any] = {}
        # called on the main rank after each epoch's checkpoints are written (reproduce
        # commits the study there)
        self.on_epoch: Callable[[int, dict[str, Any]], None] | None = None

    # subclass hooks -----------------------------------------------------------------
    def train_step(self, x, y, epoch: int, gen: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called after every epoch (e.g. online label smoothing's update)."""

    # -------------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        return model

    @property
    def raw_model(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def meta(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": self.config.command,
            "dataset": self.config.dataset,
            "class_names": list(self.data.info.class_names),
            "epoch": epoch,
            "metrics": metrics,
            "config": json.loads(json.dumps(asdict(self.config))),
            **self.meta_extra,
        }

    def fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        log = runs.MetricsLog(self.run_dir)
        start_epoch, best_score, train_seconds = 0, -math.inf, 0.0
        if resume:
            meta = load_training_state(
                self.run_dir / runs.LATEST, self.model, self.optimizer, self.extra_modules
            )
            start_epoch = meta["epoch"]
            best_score = meta.get("best_score", -math.inf)
            train_seconds = meta.get("train_seconds", 0.0)
            if self.dist.is_main:
                log.truncate_after(start_epoch)
                print(f"resuming {self.run_dir} after epoch {start_epoch}", file=sys.stderr)
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            self.set_lr(epoch)
            t0 = time.perf_counter()
            train_metrics = self.run_epoch(epoch)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            self.end_epoch(epoch)
            record = {"epoch": epoch, **train_metrics, "lr": self.current_lr()}
            if self.dist.is_main:
                record.update(self.validate())
                record["seconds"] = round(epoch_seconds, 2)
                score = record[self.score_name]
                extra = {"best_score": max(best_score, score), "train_seconds": train_seconds}
                save_checkpoint(
                    self.run_dir / runs.LATEST, self.model, self.meta(epoch, record) | extra,
                    self.optimizer, self.extra_modules,
                )  # fmt: skip
                if score > best_score:
                    best_score = score
                    save_checkpoint(
                        self.run_dir / runs.BEST, self.model, self.meta(epoch, record) | extra
                    )
                log.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, record)
            self.barrier()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "train_seconds": train_seconds}
        digests = self.gather_digests()
        if self.dist.is_main:
            runs.plot_curves(self.run_dir)
            summary.update(best_score=best_score, rank_param_digests=digests)
            summary["final"] = log.read()[-1] if log.read() else {}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def run_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        totals: dict[str, float] = {}
        seen = 0
        gen = epoch_generator(cfg.seed, epoch, salt=1 + self.dist.rank)
        bar = self.progress(epoch)
        for x, y in epoch_batches(self.data, cfg, epoch, self.dist, self.device):
            stats = self.train_step(x, y, epoch, gen)
            n = len(y)
            seen += n
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value * n
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v / seen:.4g}" for k, v in totals.items()}, refresh=False)
        if bar is not None:
            bar.close()
        return {f"train_{k}": v / max(seen, 1) for k, v in totals.items()}

    def progress(self, epoch: int):
        if not (self.config.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=batches_per_epoch(self.data, self.config, self.dist),
            desc=f"{self.config.name} epoch {epoch}/{self.config.epochs}",
            unit="batch",
            mininterval=2.0,
            dynamic_ncols=True,
        )

    def set_lr(self, epoch: int) -> None:
        cfg = self.config
        if cfg.schedule == "cosine":  # epoch 1 at the full lr, the last close to zero
            factor = 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
        else:
            factor = cfg.lr_decay ** sum(epoch > m for m in cfg.milestones)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def barrier(self) -> None:
        if self.dist.enabled:
            torch.distributed.barrier()

    def gather_digests(self) -> list[str]:
        digest = param_digest(self.model)
        if not self.dist.enabled:
            return [digest]
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, digest)
        return out


class ClassifierTrainer(Trainer):
    """STBP training with SGD + momentum and a piecewise-constant schedule; with
    ``adversarial`` the batch is replaced by PGD examples (Madry et al.)."""

    def __init__(self, config, device, dist, adversarial: bool):
        super().__init__(config, device, dist)
        self.adversarial = adversarial
        self.model = self.wrap(build_classifier(config, self.data.info))
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=False,
        )  # fmt: skip
        self.ols = (
            OnlineLabelSmoothing(self.data.info.num_classes).to(device) if config.ols else None
        )
        if self.ols is not None:
            self.extra_modules["ols"] = self.ols
        if adversarial:
            self.score_name = "val_robust_acc"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.ols is not None:
            return self.ols(logits, y)
        return F.cross_entropy(logits, y)

    def pgd_examples(self, x, y, gen) -> torch.Tensor:
        from .attacks import pgd

        cfg = self.config
        model = self.raw_model
        model.eval()
        x_adv = pgd(model, x, y, cfg.adv_eps, cfg.adv_alpha, cfg.adv_steps, generator=gen)
        model.train()
        return x_adv

    def train_step(self, x, y, epoch, gen):
        if self.adversarial:
            x = self.pgd_examples(x, y, gen)
        with autocast(self.device):
            logits = self.model(x)
        loss = self.loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        acc = (logits.argmax(1) == y).float().mean().item() * 100
        return {"loss": loss.item(), "acc": acc}

    def end_epoch(self, epoch):
        if self.ols is not None:
            if self.dist.enabled:  # every rank's soft labels from all ranks' statistics
                torch.distributed.all_reduce(self.ols.accumulated)
                torch.distributed.all_reduce(self.ols.counts)
            self.ols.next_epoch()

    def validate(self):
        model = self.raw_model.eval()
        out = {"val_acc": accuracy(model, self.data.val, self.device)}
        if self.adversarial:
            cfg = self.config
            subset = self.data.val.first(min(500, len(self.data.val)))
            gen = epoch_generator(cfg.seed, 0, salt=99)
            from .attacks import pgd

            out["val_robust_acc"] = accuracy(
                model, subset, self.device,
                transform=lambda x, y: pgd(model, x, y, cfg.adv_eps, cfg.adv_alpha,
                                           cfg.adv_steps, generator=gen),
            )  # fmt: skip
        return out


class PurifierTrainer(Trainer):
    """Algorithm 1: the classifier is frozen; the purifier learns to undo its attacks."""

    # the mean of purified clean and purified attacked accuracy: a purifier that buys
    # robustness with clean accuracy (or the reverse) is not the best one
    score_name = "val_purified_mean_acc"

    def __init__(self, config, device, dist):
        super().__init__(config, device, dist)
        classifier, cmeta = load_model(config.classifier, map_location=str(device))
        if cmeta.get("dataset") not in (None, config.dataset):
            raise UsageError(
                f"--classifier was trained on {cmeta.get('dataset')!r}, not {config.dataset!r}"
            )
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.classifier = classifier.eval()
        self.attack_eps = (
            config.attack_eps if config.attack_eps is not None else 2 * config.eval_eps
        )
        self.attack = PURIFIER_ATTACKS[config.attack]
        self.model = self.wrap(build_purifier(config, self.data.info))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.meta_extra = {
            "classifier": str(config.classifier),
            "attack": {
                "name": config.attack,
                "eps": self.attack_eps,
                "steps": config.attack_steps,
                "eps_min": config.attack_eps_min,
                "clean_fraction": config.clean_fraction,
            },  # fmt: skip
        }

    def set_lr(self, epoch: int) -> None:  # Adam at a constant lr (the paper's 1e-4)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr

    def train_step(self, x, y, epoch, gen):
        cfg = self.config
        x_adv = mixed_purifier_batch(
            self.attack, self.classifier, x, y, self.attack_eps, cfg.attack_steps, gen,
            clean_fraction=cfg.clean_fraction, eps_min=cfg.attack_eps_min,
        )  # fmt: skip
        sigma = (x_adv - x).abs()  # the true per-pixel noise level (module docstring)
        beta = 1.0 if epoch <= cfg.charbonnier_epochs else cfg.beta
        with autocast(self.device):
            purified, noise_level = self.model(x_adv)
        losses = purifier_loss(
            purified.float(), x, noise_level.float(), sigma, PurifierLossWeights(beta=beta)
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        with torch.no_grad():
            acc = (self.classifier(purified.float()).argmax(1) == y).float().mean().item() * 100
        return {**{k: v.item() for k, v in losses.items()}, "purified_acc": acc}

    def validate(self):
        purifier = self.raw_model.eval()
        cfg = self.config
        gen = epoch_generator(cfg.seed, 0, salt=77)

        def purify_then_classify(x):
            return self.classifier(purifier(x)[0])

        def attacked(eps):
            return lambda x, y: self.attack(self.classifier, x, y, eps, cfg.attack_steps, gen)

        out = {
            "val_clean_acc": accuracy(self.classifier, self.data.val, self.device),
            "val_purified_clean_acc": accuracy(purify_then_classify, self.data.val, self.device),
            "val_attacked_acc": accuracy(
                self.classifier, self.data.val, self.device, transform=attacked(cfg.eval_eps)
            ),
            "val_purified_acc": accuracy(
                purify_then_classify, self.data.val, self.device, transform=attacked(cfg.eval_eps)
            ),
        }
        out["val_purified_mean_acc"] = (out["val_purified_clean_acc"] + out["val_purified_acc"]) / 2
        return out


# --------------------------------------------------------------------------- entry points


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs one training command; the Python API behind the command line. ``on_epoch(epoch,
    record)`` runs after each epoch's checkpoints are on disk."""
    validate(config)
    torch.manual_seed(config.seed)
    dist = setup_distributed(resolve_device(config.device))
    device = resolve_device(config.device, dist.local_rank)
    if config.compile and device.type == "cpu":
        compile_kernels(True)
    run_dir = Path(config.runs_dir) / config.name
    if dist.is_main:
        resume = runs.prepare_run_dir(run_dir, config, resume=resume, force=force)
    if dist.enabled:
        flag = [resume]
        torch.distributed.broadcast_object_list(flag, src=0)
        resume = flag[0]
    if config.command == "train-purifier":
        trainer: Trainer = PurifierTrainer(config, device, dist)
    else:
        trainer = ClassifierTrainer(config, device, dist, adversarial=config.command == "adv-train")
    trainer.on_epoch = on_epoch
    return trainer.fit(resume)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        summary = train(config, resume=args.resume, force=args.force)
    except DatasetNotFoundError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
