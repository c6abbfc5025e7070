"""The evaluation suite: plan the grid, run or reuse each setting, write the report.

Each (defence, threat model, attack, eps, steps) result is a JSON file named by a hash of
its exact settings (checkpoint hashes and the attack's full configuration included): an
existing file is reused unless ``force``, so a long study can be resumed. The report is
``summary.md`` (tables and plots, ``report.py``), ``summary.json`` and ``sanity.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks import ATTACKS, SPECS, build_attack
from ..threat_models import NOISE, Defence
from . import engine, loading, report
from .config import SuiteConfig, validate


@dataclass
class SuiteReport:
    out_dir: Path
    results: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    gradient_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(not c["passed"] for c in self.checks)


def settings_key(settings: dict[str, Any]) -> str:
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
        canonical = d.canonical_threat(threat, attack != "gaussian")
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


@dataclass
class _Setup:
    """What every setting of one run shares."""

    config: SuiteConfig
    device: torch.device
    defences: list[Defence]
    loaded: dict[str, loading.Loaded]
    sources: dict[str, loading.Loaded]
    dataset: str
    images: torch.Tensor
    labels: torch.Tensor
    out_dir: Path
    name: str


def _setup(config: SuiteConfig) -> _Setup:
    from ..data import load_split

    validate(config)
    device = loading.resolve_device(config.device)
    defences, loaded = loading.defences(config, device)
    sources = loading.sources(config, device)
    if config.compile:
        from ..snn.neurons import use_kernels

        for item in (*loaded.values(), *sources.values()):
            use_kernels(item.model, "compiled")
    dataset = loading.dataset(config, loaded, sources)
    split = load_split(dataset, train=False, data_dir=config.data_dir).subset(config.n, config.seed)
    name = config.name or loaded["classifier"].path.parent.name or "evaluation"
    out_dir = Path(config.out) if config.out else Path("results") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Setup(
        config, device, defences, loaded, sources, dataset, split.float_images().to(device),
        split.labels.to(device), out_dir, name,
    )  # fmt: skip


def _settings(setup: _Setup, item: dict[str, Any], budget) -> dict[str, Any]:
    """The exact settings of one result; their hash names its file. The attack's entry is
    its ``settings()`` without the budget record (the same knobs, spelt as before budgets
    existed, so results written by earlier versions are reused where nothing changed)."""
    config, d = setup.config, item["defence"]
    probe = build_attack(
        item["attack"], None, budget.replace(eot_samples=1),
        stop_when_fooled=d.matches_attacked(item["threat"]), seed=config.seed,
    )  # fmt: skip
    checkpoints = {k: {"path": str(v.path), "sha256": v.sha256} for k, v in setup.loaded.items()}
    return {
        "defence": d.name,
        "threat_model": item["threat"],
        "attack": {k: v for k, v in probe.settings().items() if k != "budget"},
        "purpose": item["purpose"],
        "checkpoints": {m: checkpoints[m] for m in d.checkpoints},
        "sources": (
            {k: v.sha256 for k, v in setup.sources.items()} if item["threat"] == "transfer" else {}
        ),
        "surrogate_gradients": list(config.surrogates),
        "dataset": setup.dataset,
        "n": len(setup.labels),
        "subset_seed": config.seed,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "eot_samples_if_random": config.eot_samples,
    }


def partial_path(result_path: Path) -> Path:
    """Where an unfinished setting keeps the tallies of its finished batches (not ``*.json``:
    readers of a stage's results never mistake it for one)."""
    return result_path.with_suffix(".partial")


def _run_or_reuse(
    setup: _Setup, item: dict[str, Any], label: str, log, on_result, on_batch
) -> dict:
    config, d = setup.config, item["defence"]
    budget = config.budget(item["attack"], item["eps"], item["steps"], item["purpose"])
    settings = _settings(setup, item, budget)
    key = settings_key(settings)
    stub = {**item, "defence": d.name, "threat_model": item["threat"], "sigma": config.sigma}
    path = _result_path(setup.out_dir, stub, key)
    if path.exists() and not config.force:
        partial_path(path).unlink(missing_ok=True)  # left by a stop between the two writes
        result = json.loads(path.read_text())
        log(f"{label}: robust {result['robust_accuracy']:.1f}% (reused {path.name})")
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    if config.force:
        partial.unlink(missing_ok=True)  # recompute means from the first batch
    if partial.exists():
        log(f"{label}: resuming from {partial.name}")

    def batch_done(done: int, total: int) -> None:
        if on_batch is not None and done < total:
            on_batch(partial, label, done, total)

    result = engine.evaluate(
        d, item["threat"], item["attack"], setup.images, setup.labels, budget=budget,
        sources={k: v.model for k, v in setup.sources.items()}, surrogates=config.surrogates,
        seed=config.seed, batch_size=config.batch_size, partial=partial, on_batch=batch_done,
    )  # fmt: skip
    result.update(purpose=item["purpose"], settings=settings, key=key, device=str(setup.device))
    # how the gradients were computed, not what was attacked: outside the settings and key
    result["neuron_kernels"] = "compiled" if config.compile else "eager"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    partial.unlink(missing_ok=True)
    if on_result is not None:
        on_result(path, result)
    log(
        f"{label}: clean {result['clean_accuracy']:.1f}% robust "
        f"{result['robust_accuracy']:.1f}% ({result['seconds']:.1f} s)"
    )
    return result


def run_suite(
    config: SuiteConfig,
    log=print,
    on_result: Callable[[Path, dict[str, Any]], None] | None = None,
    on_batch: Callable[[Path, str, int, int], None] | None = None,
) -> SuiteReport:
    """Plans the grid, runs (or reuses) every setting, then checks and writes the report.
    ``on_result(path, result)`` runs after each newly computed result file is written;
    ``on_batch(partial, label, done, total)`` after each batch of an unfinished setting
    (``partial`` holds its tallies; a later run resumes from it)."""
    wall_start = time.perf_counter()
    setup = _setup(config)
    plan = plan_grid(config, setup.defences)
    results = []
    for i, item in enumerate(plan, 1):
        label = (
            f"[{i}/{len(plan)}] {item['defence'].name}/{item['threat']}/{item['attack']}"
            + (f"^{item['steps']}" if item["steps"] is not None else "")
            + (f" eps={item['eps']:.4g}" if item["attack"] != "gaussian" else "")
        )
        results.append(_run_or_reuse(setup, item, label, log, on_result, on_batch))
    gradient_checks = _gradient_checks(
        config, setup.defences, setup.sources, setup.images, setup.labels, plan
    )
    # the large-eps runs are what --no-sanity skips; the other checks read the results and
    # gradients at hand and always run
    checks = report.sanity_checks(results, gradient_checks)
    _write_report(setup, results, checks, gradient_checks, time.perf_counter() - wall_start)
    return SuiteReport(setup.out_dir, results, checks, gradient_checks)


def _write_report(setup: _Setup, results, checks, gradient_checks, wall_seconds: float) -> None:
    config, out_dir = setup.config, setup.out_dir
    failed = sum(not c["passed"] for c in checks)
    sanity = {"failed": failed, "checks": checks, "gradient_checks": gradient_checks}
    (out_dir / "sanity.json").write_text(json.dumps(sanity, indent=2))
    names = [d.name for d in setup.defences]
    plots = report.plot_curves(
        results, out_dir, threat_models=config.threat_models, defences=names,
        primary_eps=min(config.eps, key=lambda e: abs(e - 8 / 255)),
        primary_steps=min(config.steps, key=lambda s: abs(s - SPECS["pgd"].steps)),
    )  # fmt: skip
    checkpoints = ", ".join(f"{k}: {v.path}" for k, v in setup.loaded.items())
    header = {
        "name": setup.name,
        "dataset": f"{setup.dataset}, test split, {len(setup.labels)} images (random subset, "
        f"seed {config.seed})",
        "checkpoints": checkpoints,
        "transfer sources": ", ".join(f"{k}: {v.path}" for k, v in setup.sources.items()) or "-",
        "surrogate gradients (per-sample worst case)": ", ".join(config.surrogates),
        "step size": "2.5*eps/steps" if config.step_size is None else f"{config.step_size:.5g}",
        "attack budgets": _budgets(config),
        "early stop": "iterative attacks stop on a sample once it is misclassified only where "
        "the attacked model is the defended pipeline (white-box, end-to-end, bpda)",
        "EOT": f"{config.eot_samples} samples per gradient for random pipelines, 1 for "
        "deterministic ones (each result records what was used)",
        "device": str(setup.device),
        "wall time of this invocation": f"{wall_seconds:.1f} s",
        "compute time of all results": f"{sum(r['seconds'] for r in results):.1f} s",
    }
    summary = report.render_summary(
        results, checks, header=header, defences=names, threat_models=config.threat_models,
        attacks=config.attacks, plots=plots,
    )  # fmt: skip
    (out_dir / "summary.md").write_text(summary)
    document = {"config": asdict(config), "failed_sanity_checks": failed, "results": results}
    (out_dir / "summary.json").write_text(json.dumps(document, indent=2, default=str))


def _budgets(config: SuiteConfig) -> str:
    """Each attack's resolved budget at the first eps, as the report states it."""
    parts = []
    for attack in config.attacks:
        budget = config.budget(attack, config.eps[0], None, "table").replace(eot_samples=1)
        shown = {k: v for k, v in build_attack(attack, None, budget).budget.to_json().items()
                 if k not in ("eps", "eot_samples") and v is not None}  # fmt: skip
        if attack == "pgd":
            shown["steps"] = list(config.steps)
        parts.append(f"{attack} {shown}")
    return "; ".join(parts)


def _gradient_checks(
    config: SuiteConfig,
    defences: list[Defence],
    sources: dict[str, loading.Loaded],
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Input-gradient statistics of every model an attack differentiated."""
    x, y = images[: config.batch_size], labels[: config.batch_size]
    targets: list[tuple[str, str, str, Any]] = []
    for item in plan:
        d, threat = item["defence"], item["threat"]
        if not ATTACKS[item["attack"]].uses_gradients or threat == NOISE:
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
            stats = engine.input_gradient_stats(model, x, y, shape)
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
