"""``python -m training evaluate``: attack defences under several threat models.

Defences: ``none`` (the classifier alone), ``adv-training`` (the PGD adversarially trained
classifier alone), ``purifier`` (purifier -> classifier) and ``purifier+ols`` (purifier ->
OLS classifier). Threat models: see ``training.threat_models``.

Every white-box attack on a spiking model is repeated with several surrogate gradient
shapes and a sample counts as robust only if it survives all of them (and, for transfer,
every source model). Attacks with a random part are seeded per batch, so a run is
reproducible. Each (defence, threat model, attack, eps, steps) result is a JSON file
named by a hash of its exact settings (checkpoint hashes included): an existing file is
reused unless ``--force``, so a long study can be resumed.

Python API: ``evaluate(...)`` runs one setting on given tensors; ``run_suite(config)``
does the whole grid and writes the report (``summary.md``, ``sanity.json``, PNG plots).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import report
from .attacks import (
    APGD,
    APGDT,
    ATTACKS,
    BPDAEOT,
    CW,
    FABT,
    FGSM,
    IFGSM,
    MIFGSM,
    PGD,
    Attack,
    AutoAttack,
    GaussianNoise,
    Square,
    margin_loss,
)
from .attacks.gradient import PAPER_STEP_SIZE, PAPER_STEPS
from .errors import UsageError
from .snn import SURROGATES, use_surrogate
from .threat_models import NOISE, THREAT_MODELS, Defence, is_random

DEFAULT_ATTACKS = ("gaussian", "fgsm", "ifgsm", "mifgsm", "pgd", "cw")
DEFAULT_SURROGATES = ("rect1", "rect0.5", "rect2", "sigmoid4", "ste")
DEFENCES = ("none", "adv-training", "purifier", "purifier+ols")
BOUNDED = frozenset(ATTACKS) - {"gaussian"}


@dataclass
class SuiteConfig:
    """Everything ``run_suite`` needs; the command line fills one of these."""

    classifier: str
    purifier: str | None = None
    adv_classifier: str | None = None
    ols_classifier: str | None = None
    sources: Sequence[str] = ()
    attacks: Sequence[str] = DEFAULT_ATTACKS
    eps: Sequence[float] = (8 / 255,)
    steps: Sequence[int] = (PAPER_STEPS,)
    threat_models: Sequence[str] = THREAT_MODELS
    surrogates: Sequence[str] = DEFAULT_SURROGATES
    n: int = 1000
    dataset: str | None = None
    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 100
    device: str = "cpu"
    out: str | None = None
    name: str | None = None
    force: bool = False
    alpha: float | None = PAPER_STEP_SIZE
    sigma: float = 20 / 255
    eot_samples: int = 10
    sanity: bool = True
    # more defences by name: (classifier checkpoint, purifier checkpoint or None), e.g. a
    # second purifier or a purifier in front of the adversarially trained classifier
    extra_defences: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    # evaluate only these defences (by name; empty: all of them)
    only_defences: Sequence[str] = ()


@dataclass
class SuiteReport:
    out_dir: Path
    results: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    gradient_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(not c["passed"] for c in self.checks)


# --------------------------------------------------------------------------- attacks


def step_size(alpha: float | None, eps: float, steps: int) -> float:
    """``alpha`` if given, else Madry et al.'s ``2.5 * eps / steps`` (reaches the ball's edge
    from any start)."""
    return alpha if alpha is not None else 2.5 * eps / max(steps, 1)


def build_attack(
    name: str,
    model: Any,
    eps: float,
    *,
    steps: int | None = None,
    alpha: float | None = PAPER_STEP_SIZE,
    sigma: float = 20 / 255,
    eot_samples: int = 1,
    stop_when_fooled: bool = False,
    seed: int = 0,
) -> Attack:
    """The evaluation's attacks with the paper's settings: I-FGSM, MI-FGSM and PGD run 7
    steps of 2/255 (PGD: ``steps`` from ``--steps``), CW 50 steps of 0.01, APGD-CE 100
    iterations, BPDA+EOT 20 steps, AutoAttack the standard version."""
    common = {"eot_samples": eot_samples, "stop_when_fooled": stop_when_fooled, "seed": seed}
    if name == "gaussian":
        return GaussianNoise(model, sigma, seed=seed)
    if name == "fgsm":
        return FGSM(model, eps, seed=seed)
    if name == "ifgsm":
        return IFGSM(model, eps, step_size(alpha, eps, PAPER_STEPS), PAPER_STEPS, **common)
    if name == "mifgsm":
        return MIFGSM(model, eps, step_size(alpha, eps, PAPER_STEPS), PAPER_STEPS, **common)
    if name == "pgd":
        k = PAPER_STEPS if steps is None else steps
        return PGD(model, eps, step_size(alpha, eps, k), k, **common)
    if name == "cw":
        return CW(model, eps, **common)
    if name == "bpda-eot":
        k = 20 if steps is None else steps
        return BPDAEOT(model, eps, step_size(alpha, eps, k), k, **common)
    if name == "apgd-ce":
        return APGD(model, eps, eot_samples=eot_samples, seed=seed)
    if name == "apgd-t":
        return APGDT(model, eps, seed=seed)
    if name == "fab-t":
        return FABT(model, eps, seed=seed)
    if name == "square":
        return Square(model, eps, seed=seed)
    if name == "autoattack":
        return AutoAttack(model, eps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")


def _uses_model(attack: str) -> bool:
    return attack != "gaussian"


def _uses_gradients(attack: str) -> bool:
    return ATTACKS[attack].uses_gradients


@contextlib.contextmanager
def _surrogate(model: Any, shape: str | None):
    if shape is None or not isinstance(model, nn.Module):
        yield
    else:
        with use_surrogate(model, shape):
            yield


def _batch_seed(seed: int, batch: int) -> int:
    return seed * 1_000_003 + batch


def _attack_survivors(
    attacked: Any,
    judge: nn.Module,
    attack: str,
    x: torch.Tensor,
    y: torch.Tensor,
    alive: torch.Tensor,
    *,
    eps: float,
    surrogates: Sequence[str],
    fooled_by: Counter,
    tag: str,
    **attack_kwargs: Any,
) -> torch.Tensor:
    """Attacks the still-robust samples with each surrogate gradient in turn; returns the
    mask of samples ``judge`` (the defended pipeline) still classifies correctly."""
    alive = alive.clone()
    shapes: Sequence[str | None] = surrogates if _uses_gradients(attack) else (None,)
    for shape in shapes:
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        adversary = build_attack(attack, attacked, eps, **attack_kwargs)
        with _surrogate(attacked, shape):
            x_adv = adversary(x[idx], y[idx])
        if attack in BOUNDED:
            excess = float((x_adv - x[idx]).abs().max())
            if excess > eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
                raise RuntimeError(f"{attack} left its eps ball ({excess:.6f} > {eps})")
        with torch.no_grad():
            still = judge(x_adv).argmax(1) == y[idx]
        fooled_by[f"{tag}{shape or attack}"] += int((~still).sum())
        alive[idx[~still]] = False
    return alive


def evaluate(
    defence: Defence,
    threat: str,
    attack: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int | None = None,
    sources: dict[str, nn.Module] | None = None,
    surrogates: Sequence[str] = DEFAULT_SURROGATES,
    alpha: float | None = PAPER_STEP_SIZE,
    sigma: float = 20 / 255,
    eot_samples: int = 1,
    seed: int = 0,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Clean and robust accuracy of ``defence`` under one attack and threat model.

    ``images`` are in [0, 1] on the models' device. For ``transfer`` the attack runs on
    each model of ``sources``; the result also lists each source's own robust accuracy.
    ``eot_samples`` is used for random pipelines only (a deterministic one gets 1)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {sorted(ATTACKS)}")
    canonical = defence.canonical_threat(threat, _uses_model(attack))
    if canonical == "transfer" and not sources:
        raise ValueError("the transfer threat model needs at least one source model")
    pipeline = defence.pipeline
    start = time.perf_counter()
    n = int(labels.numel())
    clean_correct = robust_correct = 0
    per_source = Counter()
    fooled_by: Counter = Counter()
    eot_used: dict[str, int] = {}
    for b, begin in enumerate(range(0, n, batch_size)):
        x, y = images[begin : begin + batch_size], labels[begin : begin + batch_size]
        with torch.no_grad():
            correct = pipeline(x).argmax(1) == y
        clean_correct += int(correct.sum())
        kwargs = {"steps": steps, "alpha": alpha, "sigma": sigma, "seed": _batch_seed(seed, b)}
        if canonical == "transfer":
            survived = correct.clone()
            for name, source in (sources or {}).items():
                eot = eot_samples if is_random(source, x[:4]) else 1
                eot_used[name] = max(eot, eot_used.get(name, 1))
                alive = _attack_survivors(
                    source,
                    pipeline,
                    attack,
                    x,
                    y,
                    correct,
                    eps=eps,
                    surrogates=surrogates,
                    fooled_by=fooled_by,
                    tag=f"{name}:",
                    eot_samples=eot,
                    **kwargs,
                )
                per_source[name] += int(alive.sum())
                survived &= alive
        else:
            attacked = pipeline if canonical == NOISE else defence.attacked_model(canonical)
            eot = eot_samples if is_random(pipeline, x[:4]) else 1
            eot_used[defence.name] = max(eot, eot_used.get(defence.name, 1))
            survived = _attack_survivors(
                attacked,
                pipeline,
                attack,
                x,
                y,
                correct,
                eps=eps,
                surrogates=surrogates,
                fooled_by=fooled_by,
                tag="",
                eot_samples=eot,
                stop_when_fooled=defence.matches_attacked(canonical),
                **kwargs,
            )
        robust_correct += int(survived.sum())
    result: dict[str, Any] = {
        "defence": defence.name,
        "threat_model": canonical,
        "attack": attack,
        "eps": float(eps),
        "eps_255": round(float(eps) * 255, 4),
        "steps": steps,
        "n": n,
        **report.accuracy_fields("clean", clean_correct, n),
        **report.accuracy_fields("robust", robust_correct, n),
        "fooled_by": dict(fooled_by),
        "eot_samples": eot_used,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if canonical == "transfer":
        result["per_source"] = {
            name: report.accuracy_fields("robust", per_source[name], n) for name in sources or {}
        }
    return result


def input_gradient_stats(
    model: Any, images: torch.Tensor, labels: torch.Tensor, surrogate: str
) -> dict[str, float]:
    """Raw input gradient of the margin loss (which, unlike cross-entropy, does not
    saturate): fraction of samples whose gradient is all zero or has a non-finite entry."""
    with _surrogate(model, surrogate), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(margin_loss(model(x), labels).sum(), x)
    flat = grad.flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = (flat == 0).all(1)
    return {
        "n": int(labels.numel()),
        "zero_fraction": float(zero.float().mean()),
        "nonfinite_fraction": float((~finite).float().mean()),
        "mean_abs": float(flat[finite].abs().mean()) if finite.any() else float("nan"),
    }


# --------------------------------------------------------------------------- the suite


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Loaded:
    model: nn.Module
    meta: dict[str, Any]
    path: Path
    sha256: str


def _load(path: str, what: str, device: torch.device) -> _Loaded:
    from .checkpoint import load_model, resolve_checkpoint

    try:
        resolved = resolve_checkpoint(path)
        model, meta = load_model(resolved, map_location=str(device))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        raise UsageError(f"cannot load {what} checkpoint {path}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return _Loaded(model.eval(), meta, resolved, _sha256(resolved))


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


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
    if config.eot_samples < 1:
        raise UsageError(f"--eot-samples must be >= 1, got {config.eot_samples}")
    if config.alpha is not None and config.alpha <= 0:
        raise UsageError(f"--alpha must be > 0, got {config.alpha}")
    if config.sigma < 0:
        raise UsageError(f"--sigma must be >= 0, got {config.sigma}")
    if "transfer" in config.threat_models and not config.sources:
        raise UsageError("the transfer threat model needs --surrogate (a source model)")
    if config.ols_classifier and not config.purifier:
        raise UsageError("--ols-classifier is evaluated behind the purifier: give --purifier")


def _defences(config: SuiteConfig, device: torch.device) -> tuple[list[Defence], dict]:
    classifier = _load(config.classifier, "classifier", device)
    loaded = {"classifier": classifier}
    defences = [Defence("none", classifier.model, checkpoints=("classifier",))]
    if config.adv_classifier:
        loaded["adv_classifier"] = _load(config.adv_classifier, "adversarially trained", device)
        adv = loaded["adv_classifier"].model
        defences.append(Defence("adv-training", adv, checkpoints=("adv_classifier",)))
    if config.purifier:
        loaded["purifier"] = _load(config.purifier, "purifier", device)
        purifier = loaded["purifier"].model
        defences.append(Defence("purifier", classifier.model, purifier, ("classifier", "purifier")))
    if config.ols_classifier:
        loaded["ols_classifier"] = _load(config.ols_classifier, "OLS classifier", device)
        ols = loaded["ols_classifier"].model
        defences.append(Defence("purifier+ols", ols, purifier, ("ols_classifier", "purifier")))
    for name, (classifier_path, purifier_path) in config.extra_defences.items():
        if any(d.name == name for d in defences):
            raise UsageError(f"defence {name!r} is defined twice")
        keys = (f"{name}:classifier",) + ((f"{name}:purifier",) if purifier_path else ())
        loaded[keys[0]] = _load(str(classifier_path), f"{name} classifier", device)
        purifier_model = None
        if purifier_path:
            loaded[keys[1]] = _load(str(purifier_path), f"{name} purifier", device)
            purifier_model = loaded[keys[1]].model
        defences.append(Defence(name, loaded[keys[0]].model, purifier_model, keys))
    for key, item in loaded.items():
        wants_purifier = key == "purifier" or key.endswith(":purifier")
        if wants_purifier != (item.meta.get("model") == "purifier"):
            raise UsageError(f"{item.path} holds a {item.meta.get('model')!r}, not a {key}")
    if config.only_defences:
        unknown = sorted(set(config.only_defences) - {d.name for d in defences})
        if unknown:
            raise UsageError(f"unknown defence(s) {unknown}; have {[d.name for d in defences]}")
        defences = [d for d in defences if d.name in config.only_defences]
    return defences, loaded


def _dataset(config: SuiteConfig, loaded: dict[str, _Loaded], sources: dict) -> str:
    names = {item.meta.get("dataset") for item in [*loaded.values(), *sources.values()]}
    names.discard(None)
    if config.dataset:
        names.add(config.dataset)
    if not names:
        raise UsageError("the checkpoint does not record its dataset: pass --dataset")
    if len(names) > 1:
        raise UsageError(f"checkpoints and --dataset disagree on the dataset: {sorted(names)}")
    return names.pop()


def _settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _result_path(out_dir: Path, r: dict[str, Any], key: str) -> Path:
    steps = f"_steps{r['steps']}" if r.get("steps") is not None else ""
    eps = f"_eps{r['eps']:.5f}" if r["attack"] != "gaussian" else f"_sigma{r['sigma']:.5f}"
    folder = out_dir / r["defence"] / r["threat_model"]
    return folder / f"{r['attack']}{steps}{eps}_{key}.json"


def plan_grid(config: SuiteConfig, defences: list[Defence]) -> list[dict[str, Any]]:
    """The (defence, threat, attack, eps, steps) grid, white-box duplicates removed, with
    the large-eps sanity runs appended."""
    plan: list[dict[str, Any]] = []
    seen: set[tuple] = set()

    def add(d: Defence, threat: str, attack: str, eps: float, steps: int | None, purpose: str):
        canonical = d.canonical_threat(threat, _uses_model(attack))
        if attack == "gaussian":
            eps = 0.0
        key = (d.name, canonical, attack, eps, steps, purpose)
        if key not in seen:
            seen.add(key)
            plan.append(
                {
                    "defence": d,
                    "threat": canonical,
                    "attack": attack,
                    "eps": eps,
                    "steps": steps,
                    "purpose": purpose,
                }
            )

    for d in defences:
        for threat in config.threat_models:
            for attack in config.attacks:
                if attack == "bpda-eot" and threat != "bpda":
                    continue  # BPDA+EOT is the bpda threat model's attack
                for eps in config.eps:
                    for steps in config.steps if attack == "pgd" else (None,):
                        add(d, threat, attack, eps, steps, "table")
    if config.sanity:
        for d in defences:
            for threat in config.threat_models:
                add(d, threat, "pgd", report.LARGE_EPS, report.LARGE_EPS_STEPS, "sanity-large-eps")
    return plan


def run_suite(
    config: SuiteConfig,
    log=print,
    on_result: Callable[[Path, dict[str, Any]], None] | None = None,
) -> SuiteReport:
    """Runs (or reuses) every result of the grid, then checks and writes the report.
    ``on_result(path, result)`` runs after each newly computed result file is written."""
    from .data import load_split

    validate(config)
    device = _resolve_device(config.device)
    wall_start = time.perf_counter()
    defences, loaded = _defences(config, device)
    source_items: dict[str, _Loaded] = {}
    for i, p in enumerate(config.sources):
        item = _load(p, "transfer source", device)
        if item.meta.get("model") == "purifier":
            raise UsageError(f"--surrogate {p} holds a purifier, not a classifier")
        name = item.path.parent.name if item.path.parent.name else f"source{i}"
        if name in source_items:
            name = f"{name}-{i}"
        source_items[name] = item
    dataset = _dataset(config, loaded, source_items)
    split = load_split(dataset, train=False, data_dir=config.data_dir).subset(config.n, config.seed)
    images, labels = split.float_images().to(device), split.labels.to(device)
    name = config.name or loaded["classifier"].path.parent.name or "evaluation"
    out_dir = Path(config.out) if config.out else Path("results") / name
    out_dir.mkdir(parents=True, exist_ok=True)

    checkpoints = {k: {"path": str(v.path), "sha256": v.sha256} for k, v in loaded.items()}
    source_ids = {k: v.sha256 for k, v in source_items.items()}
    plan = plan_grid(config, defences)
    results: list[dict[str, Any]] = []
    for i, item in enumerate(plan, 1):
        d: Defence = item["defence"]
        probe = build_attack(
            item["attack"],
            None,
            item["eps"],
            steps=item["steps"],
            alpha=config.alpha if item["purpose"] == "table" else None,
            sigma=config.sigma,
            stop_when_fooled=d.matches_attacked(item["threat"]),
            seed=config.seed,
        )
        settings = {
            "defence": d.name,
            "threat_model": item["threat"],
            "attack": probe.settings(),
            "purpose": item["purpose"],
            "checkpoints": {m: checkpoints[m] for m in d.checkpoints},
            "sources": source_ids if item["threat"] == "transfer" else {},
            "surrogate_gradients": list(config.surrogates),
            "dataset": dataset,
            "n": len(labels),
            "subset_seed": config.seed,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "eot_samples_if_random": config.eot_samples,
        }
        key = _settings_key(settings)
        stub = {**item, "defence": d.name, "threat_model": item["threat"], "sigma": config.sigma}
        path = _result_path(out_dir, stub, key)
        label = (
            f"[{i}/{len(plan)}] {d.name}/{item['threat']}/{item['attack']}"
            + (f"^{item['steps']}" if item["steps"] is not None else "")
            + (f" eps={item['eps']:.4g}" if item["attack"] != "gaussian" else "")
        )
        if path.exists() and not config.force:
            result = json.loads(path.read_text())
            log(f"{label}: robust {result['robust_accuracy']:.1f}% (reused {path.name})")
        else:
            result = evaluate(
                d,
                item["threat"],
                item["attack"],
                images,
                labels,
                eps=item["eps"],
                steps=item["steps"],
                sources={k: v.model for k, v in source_items.items()},
                surrogates=config.surrogates,
                sigma=config.sigma,
                alpha=config.alpha if item["purpose"] == "table" else None,
                eot_samples=config.eot_samples,
                seed=config.seed,
                batch_size=config.batch_size,
            )
            result.update(purpose=item["purpose"], settings=settings, key=key, device=str(device))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(path)
            if on_result is not None:
                on_result(path, result)
            log(
                f"{label}: clean {result['clean_accuracy']:.1f}% robust "
                f"{result['robust_accuracy']:.1f}% ({result['seconds']:.1f} s)"
            )
        results.append(result)

    gradient_checks = _gradient_checks(config, defences, source_items, images, labels, plan)
    checks = report.sanity_checks(results, gradient_checks) if config.sanity else []
    (out_dir / "sanity.json").write_text(
        json.dumps(
            {
                "failed": sum(not c["passed"] for c in checks),
                "checks": checks,
                "gradient_checks": gradient_checks,
            },
            indent=2,
        )
    )
    primary_eps = min(config.eps, key=lambda e: abs(e - 8 / 255))
    primary_steps = min(config.steps, key=lambda s: abs(s - PAPER_STEPS))
    plots = report.plot_curves(
        results,
        out_dir,
        threat_models=config.threat_models,
        defences=[d.name for d in defences],
        primary_eps=primary_eps,
        primary_steps=primary_steps,
    )
    header = {
        "name": name,
        "dataset": f"{dataset}, test split, {len(labels)} images (random subset, seed "
        f"{config.seed})",
        "checkpoints": ", ".join(f"{k}: {v['path']}" for k, v in checkpoints.items()),
        "transfer sources": ", ".join(f"{k}: {v.path}" for k, v in source_items.items()) or "-",
        "surrogate gradients (per-sample worst case)": ", ".join(config.surrogates),
        "step size": "2.5*eps/steps" if config.alpha is None else f"{config.alpha:.5g}",
        "attack budgets": _budgets(config),
        "early stop": "iterative attacks stop on a sample once it is misclassified only where "
        "the attacked model is the defended pipeline (white-box, end-to-end, bpda)",
        "EOT": f"{config.eot_samples} samples per gradient for random pipelines, 1 for "
        "deterministic ones (each result records what was used)",
        "device": str(device),
        "wall time of this invocation": f"{time.perf_counter() - wall_start:.1f} s",
        "compute time of all results": f"{sum(r['seconds'] for r in results):.1f} s",
    }
    summary = report.render_summary(
        results,
        checks,
        header=header,
        defences=[d.name for d in defences],
        threat_models=config.threat_models,
        attacks=config.attacks,
        plots=plots,
    )
    (out_dir / "summary.md").write_text(summary)
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "config": asdict(config),
                "failed_sanity_checks": sum(not c["passed"] for c in checks),
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    return SuiteReport(out_dir, results, checks, gradient_checks)


def _budgets(config: SuiteConfig) -> str:
    parts = []
    for attack in config.attacks:
        settings = build_attack(
            attack, None, config.eps[0], alpha=config.alpha, sigma=config.sigma
        ).settings()
        hidden = ("attack", "eps", "seed", "norm", "eot_samples", "stop_when_fooled")
        shown = {k: v for k, v in settings.items() if k not in hidden}
        if attack == "pgd":
            shown["steps"] = list(config.steps)
        parts.append(f"{attack} {shown}")
    return "; ".join(parts)


def _gradient_checks(
    config: SuiteConfig,
    defences: list[Defence],
    sources: dict[str, _Loaded],
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Input-gradient statistics of every model an attack differentiated."""
    x, y = images[: config.batch_size], labels[: config.batch_size]
    targets: list[tuple[str, str, str, Any]] = []
    for item in plan:
        d, threat = item["defence"], item["threat"]
        if not _uses_gradients(item["attack"]) or threat == NOISE:
            continue
        if threat == "transfer":
            targets += [("-", "transfer", name, s.model) for name, s in sources.items()]
        else:
            targets.append(
                (d.name, threat, type(d.attacked_model(threat)).__name__, d.attacked_model(threat))
            )
    checks, done = [], set()
    for defence, threat, model_name, model in targets:
        if (defence, threat, model_name) in done:
            continue
        done.add((defence, threat, model_name))
        for shape in config.surrogates:
            stats = input_gradient_stats(model, x, y, shape)
            checks.append(
                {
                    "defence": defence,
                    "threat_model": threat,
                    "model": model_name,
                    "surrogate": shape,
                    **stats,
                }
            )
    return checks


# --------------------------------------------------------------------------- command line


def _eps(text: str) -> float:
    """A float in pixel units; ``8/255`` style fractions are accepted too."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _alpha(text: str) -> float | None:
    return None if text == "auto" else _eps(text)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    add = parser.add_argument
    add("--classifier", required=True, help="classifier checkpoint (.safetensors or run dir)")
    add("--purifier", help="purifier checkpoint: adds the 'purifier' defence")
    add("--adv-classifier", help="adversarially trained classifier: adds 'adv-training'")
    add("--ols-classifier", help="OLS-trained classifier: adds 'purifier+ols'")
    add(
        "--surrogate",
        action="append",
        default=[],
        dest="sources",
        metavar="CHECKPOINT",
        help="independently trained source model for the transfer threat model (repeatable)",
    )
    add(
        "--attacks",
        nargs="+",
        default=list(DEFAULT_ATTACKS),
        metavar="ATTACK",
        help=f"attacks to run (default: {' '.join(DEFAULT_ATTACKS)}); one of {sorted(ATTACKS)}",
    )
    add(
        "--eps",
        nargs="+",
        type=_eps,
        default=[8 / 255],
        help="L-inf budgets in pixel units (0.0314 or 8/255; default 8/255)",
    )
    add("--steps", nargs="+", type=int, default=[PAPER_STEPS], help="PGD step counts (default 7)")
    add(
        "--threat-models",
        nargs="+",
        default=None,
        metavar="THREAT",
        help=f"threat models, of {' '.join(THREAT_MODELS)} (default: all; transfer only when "
        "--surrogate is given)",
    )
    add(
        "--surrogate-gradients",
        nargs="+",
        default=list(DEFAULT_SURROGATES),
        dest="surrogates",
        metavar="NAME",
        help="surrogate gradient shapes of the per-sample worst case "
        f"(default: {' '.join(DEFAULT_SURROGATES)}; choose from {sorted(SURROGATES)})",
    )
    add("-n", type=int, default=1000, help="number of test images (random subset; default 1000)")
    add("--dataset", help="dataset, when the checkpoint does not record it")
    add("--data-dir", help="dataset directory")
    add("--seed", type=int, default=0, help="seed of the image subset and of the attacks")
    add("--batch-size", type=int, default=100)
    add("--device", default="cpu")
    add("--out", help="output directory (default results/<name>)")
    add("--name", help="name of the evaluation (default: the classifier's run directory)")
    add("--force", action="store_true", help="recompute results that already exist")
    add(
        "--alpha",
        type=_alpha,
        default=PAPER_STEP_SIZE,
        help="step size of I-FGSM, MI-FGSM, "
        "PGD, BPDA+EOT (default 2/255, the paper's; 'auto' = 2.5*eps/steps)",
    )
    add("--sigma", type=_eps, default=20 / 255, help="Gaussian noise sigma (default 20/255)")
    add(
        "--eot-samples",
        type=int,
        default=10,
        help="EOT samples per gradient when a pipeline is random (a deterministic one uses 1)",
    )
    add("--no-sanity", dest="sanity", action="store_false", help="skip the sanity checks")


def run(args: argparse.Namespace) -> int:
    """Exit 0; 1 when the evaluation ran but a sanity check failed."""
    threat_models = args.threat_models or [
        t for t in THREAT_MODELS if t != "transfer" or args.sources
    ]
    config = SuiteConfig(
        classifier=args.classifier,
        purifier=args.purifier,
        adv_classifier=args.adv_classifier,
        ols_classifier=args.ols_classifier,
        sources=args.sources,
        attacks=args.attacks,
        eps=args.eps,
        steps=args.steps,
        threat_models=threat_models,
        surrogates=args.surrogates,
        n=args.n,
        dataset=args.dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        name=args.name,
        force=args.force,
        alpha=args.alpha,
        sigma=args.sigma,
        eot_samples=args.eot_samples,
        sanity=args.sanity,
    )
    result = run_suite(config, log=lambda line: print(line, flush=True))
    print(f"wrote {result.out_dir / 'summary.md'}")
    if result.failed:
        print(
            f"FAILED: {result.failed} sanity check(s); see {result.out_dir / 'summary.md'}",
            file=sys.stderr,
        )
        return 1
    return 0
