"""``run_detection(config)``: the noise-level detector study of one purifier, resumable.

Settings, each one JSON file ``<out>/<defence>/<threat model>/<attack>_steps<k>_eps<e>_<key>
.json`` (``key`` hashes the exact settings and checkpoints): the evaluation's attack (APGD-CE
by default) classifier-only and end-to-end, and the adaptive attackers, end to end, who also
keep a detector's score low: the mean noise level (``pgd-noise-aware``) and the residual
mean |purified - input| (``pgd-residual-aware``). An existing file is reused unless
``force``. The clean images' scores are recomputed every run (one purifier pass).
``<out>/detection.json`` gathers the summaries (rewritten after each setting, so an
interrupted run shows what it finished).

Every file carries the evaluation's fields (defence, threat_model, attack, eps, steps, n,
clean/robust accuracy with Wilson 95 % intervals, seconds, device, settings) and, under
``detection``, per score: the ROC AUC with DeLong's interval (clean vs every attacked image,
and clean vs the examples that fool the pipeline), the threshold at ``fpr`` set on the clean
images of the calibration fold, its false-positive rate there and on the held-out fold,
and the true-positive rate and the share of images that fool the pipeline undetected.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..evaluation import report
from ..evaluation.loading import resolve_device
from ..threat_models import Defence
from . import attacks as adv
from . import stats

# the adaptive attacks and the score each keeps low
ADAPTIVE = {"pgd-noise-aware": "mean", "pgd-residual-aware": "residual"}
FORMAT = 1


@dataclass
class DetectionConfig:
    """Everything ``run_detection`` needs; the ``detect`` command fills one of these."""

    classifier: str
    purifier: str
    out: str
    defence: str = "purifier"
    attack: str = "apgd-ce"
    threat_models: Sequence[str] = ("classifier-only", "end-to-end")
    eps: float = 0.1
    steps: int | None = None  # the attack's default (APGD-CE 100, PGD 7) when None
    adaptive: bool = True
    adaptive_steps: int = 100
    lambdas: Sequence[float] = (0.0, 1.0, 10.0, 100.0)
    surrogates: Sequence[str] = ("rect1", "sigmoid4", "ste")
    fpr: float = 0.05
    n: int = 500
    dataset: str | None = None
    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 100
    device: str = "cpu"
    force: bool = False
    compile: bool = False  # the attacks' neurons on the torch.compile kernels, as evaluate's


@dataclass
class _Clean:
    x: torch.Tensor
    y: torch.Tensor
    correct: np.ndarray
    raw: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    folds: np.ndarray
    thresholds: dict[str, float]


def validate(config: DetectionConfig) -> None:
    """Raises ``UsageError`` naming the first bad setting."""
    from ..attacks import ATTACKS
    from ..snn import SURROGATES

    if config.attack not in ATTACKS or config.attack == "gaussian":
        raise UsageError(f"unknown attack {config.attack!r}; choose from {sorted(ATTACKS)}")
    bad = [t for t in config.threat_models if t not in ("classifier-only", "end-to-end", "bpda")]
    if bad:
        raise UsageError(f"threat models must be classifier-only, end-to-end or bpda: {bad}")
    bad = [s for s in config.surrogates if s not in SURROGATES]
    if bad or not config.surrogates:
        raise UsageError(f"unknown surrogate gradient(s) {bad}; choose from {sorted(SURROGATES)}")
    if not 0 < config.eps <= 1:
        raise UsageError(f"--eps must be in (0, 1] (pixel units), got {config.eps}")
    if not 0 < config.fpr < 1:
        raise UsageError(f"--fpr must be in (0, 1), got {config.fpr}")
    if config.n < 4 or config.batch_size < 1:
        raise UsageError(
            f"-n must be >= 4 and --batch-size >= 1, got {config.n}, {config.batch_size}"
        )
    if config.adaptive and (not config.lambdas or any(lam < 0 for lam in config.lambdas)):
        raise UsageError(f"--lambdas must be >= 0, got {list(config.lambdas)}")
    if config.adaptive_steps < 1 or (config.steps is not None and config.steps < 1):
        raise UsageError("--steps and --adaptive-steps must be >= 1")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return str(device)


def _load(config: DetectionConfig, device: torch.device):
    from contract.hashing import sha256_file

    from ..checkpoint import load_model, resolve_checkpoint

    loaded = {}
    for role, path in (("classifier", config.classifier), ("purifier", config.purifier)):
        try:
            resolved = resolve_checkpoint(path)
            model, meta = load_model(resolved, map_location=str(device))
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
            raise UsageError(f"cannot load {role} checkpoint {path}: {exc}") from None
        if (meta.get("model") == "purifier") != (role == "purifier"):
            raise UsageError(f"{resolved} holds a {meta.get('model')!r}, not a {role}")
        for p in model.parameters():
            p.requires_grad_(False)
        if config.compile:
            from ..snn.neurons import use_kernels

            use_kernels(model, "compiled")
        loaded[role] = (
            model.eval(),
            meta,
            {"path": str(resolved), "sha256": sha256_file(resolved)},
        )
    return loaded


def _clean(defence: Defence, x, y, config: DetectionConfig) -> _Clean:
    raw = _raw_scores(defence.purifier, x, config.batch_size)
    folds = stats.folds_of(len(y))
    scores = stats.finish_scores(raw, raw, folds)
    thresholds = {k: stats.threshold_at_fpr(v[folds == 0], config.fpr) for k, v in scores.items()}
    correct = (adv.predictions(defence.pipeline, x, config.batch_size) == y).cpu().numpy()
    return _Clean(x, y, correct, raw, scores, folds, thresholds)


def _raw_scores(purifier, x: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    parts = [
        stats.image_scores(purifier, x[i : i + batch_size]) for i in range(0, len(x), batch_size)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def detection_block(
    clean: _Clean, scores: dict[str, np.ndarray], fooled: np.ndarray, fpr: float
) -> dict[str, Any]:
    """Per score: AUCs (all attacked images; fooling examples only), the threshold, its
    false-positive rates and the true-positive / undetected-fooling rates."""
    out: dict[str, Any] = {}
    cal, held = clean.folds == 0, clean.folds == 1
    for name in stats.SCORES:
        c, a, t = clean.scores[name], scores[name], clean.thresholds[name]
        flags = stats.flagged(a, t)
        auc, lo, hi = stats.delong_interval(c, a)
        entry: dict[str, Any] = {
            "auc_all": round(auc, 4),
            "auc_all_ci95": [round(lo, 4), round(hi, 4)],
            "auc_fooled": None,
            "auc_fooled_ci95": None,
            "threshold": t,
            "fpr_calibration": stats.rate(int(stats.flagged(c[cal], t).sum()), int(cal.sum())),
            "fpr_held_out": stats.rate(int(stats.flagged(c[held], t).sum()), int(held.sum())),
            "tpr_all": stats.rate(int(flags.sum()), len(a)),
            "tpr_fooled": stats.rate(int(flags[fooled].sum()), int(fooled.sum())),
            "fooled_and_passed": stats.rate(int((fooled & ~flags).sum()), len(a)),
        }
        if fooled.any():
            auc, lo, hi = stats.delong_interval(c, a[fooled])
            entry.update(auc_fooled=round(auc, 4), auc_fooled_ci95=[round(lo, 4), round(hi, 4)])
        out[name] = entry
    return out


def _per_image(values: np.ndarray) -> list[float]:
    """Per-image scores at full precision: the thresholds and rates in the summary are
    computed from these exact values, so a reader recomputing them from the file gets the
    same answer (rounded scores could land on the other side of a threshold)."""
    return [float(v) for v in np.asarray(values, float)]


PER_IMAGE = ("fooled", "scores", "clean_scores")


def _dumps(result: dict[str, Any]) -> str:
    """JSON with the figures indented and each per-image array on one line."""
    head = json.dumps({k: v for k, v in result.items() if k not in PER_IMAGE}, indent=1)
    tail = "".join(
        f',\n "{k}": {json.dumps(result[k], separators=(",", ":"))}'
        for k in PER_IMAGE
        if k in result
    )
    return head[: -len("\n}")] + tail + "\n}\n"


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :12
    ]


def result_path(
    out: Path, defence: str, threat: str, attack: str, steps, eps: float, key: str
) -> Path:
    tail = f"_steps{steps}" if steps is not None else ""
    return out / defence / threat / f"{attack}{tail}_eps{eps:.5f}_{key}.json"


def plan(config: DetectionConfig) -> list[dict[str, Any]]:
    """The settings of the study, in the order they run."""
    items = [
        {"threat": t, "attack": config.attack, "steps": config.steps} for t in config.threat_models
    ]
    if config.adaptive:
        items += [
            {"threat": "end-to-end", "attack": attack, "steps": config.adaptive_steps}
            for attack in ADAPTIVE
        ]
    return items


def _setting_file(out: Path, config: DetectionConfig, base: dict[str, Any], item: dict):
    """A setting's exact settings, their hash and its result file."""
    settings = {**base, "threat_model": item["threat"], "attack": item["attack"],
                "steps": item["steps"]}  # fmt: skip
    if item["attack"] in ADAPTIVE:
        settings["lambdas"] = [float(lam) for lam in config.lambdas]
    key = _key(settings)
    path = result_path(out, config.defence, item["threat"], item["attack"], item["steps"],
                       config.eps, key)  # fmt: skip
    return settings, key, path


def run_detection(
    config: DetectionConfig,
    log: Callable[[str], None] = print,
    on_result: Callable[[Path, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs (or reuses) every setting of ``plan(config)``, writes ``detection.json`` beside
    them and returns it. ``on_result(path, result)`` runs after each newly written file."""
    from ..data import load_split

    validate(config)
    device = resolve_device(config.device)
    loaded = _load(config, device)
    dataset = config.dataset or loaded["classifier"][1].get("dataset")
    if not dataset:
        raise UsageError("the checkpoint does not record its dataset: pass --dataset")
    split = load_split(dataset, train=False, data_dir=config.data_dir).subset(config.n, config.seed)
    x, y = split.float_images().to(device), split.labels.to(device)
    classifier, purifier = loaded["classifier"][0], loaded["purifier"][0]
    defence = Defence(config.defence, classifier, purifier, ("classifier", "purifier"))
    clean = _clean(defence, x, y, config)
    out = Path(config.out)
    base = {
        "format": FORMAT, "defence": config.defence, "dataset": dataset, "n": len(y),
        "subset_seed": config.seed, "seed": config.seed, "batch_size": config.batch_size,
        "surrogate_gradients": list(config.surrogates), "fpr": config.fpr, "eps": config.eps,
        "checkpoints": {role: item[2] for role, item in loaded.items()},
    }  # fmt: skip
    results: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    items = plan(config)
    for i, item in enumerate(items, 1):
        settings, key, path = _setting_file(out, config, base, item)
        label = f"[{i}/{len(items)}] {config.defence}/{item['threat']}/{item['attack']}"
        fresh = config.force or not path.exists()
        if fresh:
            result = _run_setting(defence, clean, item, config, settings, device)
            result["key"] = key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(_dumps(result))
            tmp.replace(path)
            mean = result["detection"]["mean"]
            log(f"{label}: robust {result['robust_accuracy']:.1f}%, mean-noise AUC (fooled) "
                f"{mean['auc_fooled']}, {result['seconds']:.0f} s")  # fmt: skip
        else:
            result = json.loads(path.read_text())
            log(f"{label}: reused {path.name}")
        results.append({**result, "file": str(path.relative_to(out))})
        # rewritten after each setting, before ``on_result``, so an interrupted run shows
        # (and a commit in ``on_result`` holds) what it finished
        summary = summarise(results, clean, config)
        (out / "detection.json").write_text(json.dumps(summary, indent=2) + "\n")
        if fresh and on_result is not None:
            on_result(path, result)
    return summary


def _run_setting(defence, clean: _Clean, item, config: DetectionConfig, settings, device):
    start = time.perf_counter()
    common = {"eps": config.eps, "surrogates": config.surrogates, "seed": config.seed,
              "batch_size": config.batch_size}  # fmt: skip
    extra: dict[str, Any] = {}
    if item["attack"] in ADAPTIVE:
        score = ADAPTIVE[item["attack"]]
        threshold = clean.thresholds[score]
        found = adv.adaptive(defence, clean.x, clean.y, threshold=threshold, score=score,
                             steps=item["steps"], lambdas=config.lambdas, **common)  # fmt: skip
        images, attack_settings, fooled_by = found.images, found.settings, found.accepted_by
        fooled_any = found.fooled.numpy()
        extra["adaptive"] = _adaptive_block(clean, found, score, threshold)
    else:
        found = adv.worst_case(defence, item["threat"], item["attack"], clean.x, clean.y,
                               steps=item["steps"], **common)  # fmt: skip
        images, attack_settings, fooled_by = found.images, found.settings, found.fooled_by
        fooled_any = found.fooled.numpy()
    raw = _raw_scores(defence.purifier, images, config.batch_size)
    scores = stats.finish_scores(clean.raw, raw, clean.folds)
    y = clean.y
    fooled = (
        clean.correct
        & (adv.predictions(defence.pipeline, images, config.batch_size) != y).cpu().numpy()
    )
    n = len(y)
    robust = int((clean.correct & ~fooled_any).sum())
    return {
        "defence": defence.name, "threat_model": item["threat"], "attack": item["attack"],
        "eps": float(config.eps), "eps_255": round(float(config.eps) * 255, 4),
        "steps": item["steps"], "n": n, "purpose": "detection",
        **report.accuracy_fields("clean", int(clean.correct.sum()), n),
        **report.accuracy_fields("robust", robust, n),
        "fooled_by": dict(fooled_by), "seconds": round(time.perf_counter() - start, 3),
        "device": _device_name(device), "attack_settings": attack_settings, "settings": settings,
        "detection": detection_block(clean, scores, fooled, config.fpr), **extra,
        "fooled": [int(i) for i in np.flatnonzero(fooled)],
        "scores": {k: _per_image(v) for k, v in scores.items()},
        "clean_scores": {k: _per_image(v) for k, v in clean.scores.items()},
    }  # fmt: skip


def _adaptive_block(
    clean: _Clean, found: adv.AdaptiveResult, score: str, threshold: float
) -> dict[str, Any]:
    """The adaptive setting's figures against the detector on ``score``: per lambda the
    score's mean over the examples (and over those that fool the pipeline), how many fool
    it and pass, and the AUC. (Results written before the residual-aware attack existed
    name the score's means ``mean_noise_level``.)"""
    n = len(clean.y)
    by_lambda = []
    for lam, entry in found.by_lambda.items():
        values = np.asarray(entry["scores"][score], float)
        fooled = entry["fooled"].numpy()
        passed = fooled & (values <= threshold)
        row = {
            "lambda": lam,
            "mean_score": float(values.mean()),
            "mean_score_fooled": float(values[fooled].mean()) if fooled.any() else None,
            "fooled": stats.rate(int(fooled.sum()), n),
            "fooled_and_passed": stats.rate(int(passed.sum()), n),
            "auc_fooled": None,
        }
        if fooled.any():
            auc, lo, hi = stats.delong_interval(clean.scores[score], values[fooled])
            row.update(auc_fooled=round(auc, 4), auc_fooled_ci95=[round(lo, 4), round(hi, 4)])
        by_lambda.append(row)
    accepted = found.accepted.numpy()
    return {
        "detector": score,
        "threshold": threshold,
        "clean_mean_score": float(clean.scores[score].mean()),
        "fooled_any": stats.rate(int(found.fooled.numpy().sum()), n),
        "fooled_and_passed": stats.rate(int(accepted.sum()), n),
        "defended_accuracy": stats.rate(int((clean.correct & ~accepted).sum()), n),
        "by_lambda": by_lambda,
    }


def summarise(results: list[dict[str, Any]], clean: _Clean, config: DetectionConfig) -> dict:
    """``detection.json``: the settings' figures without the per-image arrays, and the
    alternative score with the best AUC on the end-to-end examples (chosen on these
    images: a hint for the next study, not a held-out result)."""
    per_image = ("scores", "clean_scores", "fooled", "settings")
    rows = [{k: v for k, v in r.items() if k not in per_image} for r in results]
    reference = next(
        (r for r in rows if r["threat_model"] == "end-to-end" and r["attack"] not in ADAPTIVE),
        rows[0] if rows else None,
    )
    best = None
    if reference is not None:
        candidates = [(s, d) for s, d in reference["detection"].items() if s != "mean"]
        candidates = [(s, d) for s, d in candidates if d["auc_fooled"] is not None]
        if candidates:
            name, entry = max(candidates, key=lambda item: item[1]["auc_fooled"])
            best = {"score": name, "label": stats.SCORE_LABELS[name], "setting": reference["file"],
                    "auc_fooled": entry["auc_fooled"], "auc_fooled_ci95": entry["auc_fooled_ci95"],
                    "mean_auc_fooled": reference["detection"]["mean"]["auc_fooled"]}  # fmt: skip
    return {
        "format": FORMAT,
        "config": asdict(config),
        "scores": stats.SCORE_LABELS,
        "thresholds": clean.thresholds,
        "clean": {
            **report.accuracy_fields("clean", int(clean.correct.sum()), len(clean.y)),
            "mean_score": {k: float(v.mean()) for k, v in clean.scores.items()},
        },
        "results": rows,
        "best_alternative": best,
    }


def study_config(
    study: str | Path,
    name: str,
    classifier: str = "clf-k3",
    purifier: str = "purifier",
    **overrides: Any,
) -> DetectionConfig:
    """The detection stage ``name`` of a study directory: checkpoints from its run
    directories ``study/<classifier>`` and ``study/<purifier>``, results under
    ``study/eval/<name>/`` (``<purifier>/<threat model>/<setting>.json``, as the evaluation
    files its results), the defence named after the purifier's stage."""
    study = Path(study)
    settings: dict[str, Any] = {
        "classifier": str(study / classifier),
        "purifier": str(study / purifier),
        "out": str(study / "eval" / name),
        "defence": purifier,
    }
    return DetectionConfig(**{**settings, **overrides})
