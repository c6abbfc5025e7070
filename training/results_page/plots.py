"""PNG plots of the results page (matplotlib, Agg). Each function draws only measured
rows and returns ``None`` when there is nothing to draw, so no plot shows a missing row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detection.stats import SCORES
from .data import StudyData, eps_key
from .sections import sweep_lines
from .text import attack_label, defence_label, sort_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _devices(rows) -> str:
    names = sorted({(r.result or {}).get("device") or "?" for r in rows})
    return ", ".join(names)


def headline(data: StudyData, out: Path) -> tuple[Path, str] | None:
    rows = sorted((r for r in data.select("headline") if r.measured), key=sort_key)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    values = np.array([r.robust for r in rows])
    errors = np.array([[r.robust - r.ci[0], r.ci[1] - r.robust] for r in rows]).T
    ax.barh(y, values, xerr=errors, color="#4c72b0", capsize=3)
    ax.set_yticks(
        y,
        [
            f"{defence_label(r.defence)} · {r.threat_model} · {attack_label(r.attack, r.steps)}"
            for r in rows
        ],
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("robust accuracy (%), Wilson 95 % interval")
    devices = _devices(rows)
    eps = f", ε = {data.eval_eps:g}" if data.eval_eps is not None else ""
    ax.set_title(f"Headline rows{eps} (device: {devices})", fontsize=10)
    return _save(plt, fig, out / "headline.png"), devices


def training_time(data: StudyData, out: Path) -> tuple[Path, str] | None:
    items = [
        (k, v["train_seconds"], v.get("device") or "?")
        for k, v in data.training.items()
        if v.get("train_seconds")
    ]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1.5))
    colours = [
        "#c44e52" if "adv" in k else "#55a868" if "purifier" in k else "#8c8c8c"
        for k, _, _ in items
    ]
    ax.barh([k for k, _, _ in items], [s / 3600 for _, s, _ in items], color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("training time (hours)")
    devices = ", ".join(sorted({d for _, _, d in items}))
    ax.set_title(f"Training time by stage (device: {devices})", fontsize=10)
    return _save(plt, fig, out / "training_time.png"), devices


def sweep(data: StudyData, out: Path, stage: str, axis: str) -> tuple[Path, str] | None:
    rows = [r for r in data.select(stage) if r.measured]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (defence, threat), series in sweep_lines(rows, axis).items():
        xs = [r.steps if axis == "steps" else eps_key(r.eps) for r in series]
        ys = [r.robust for r in series]
        err = np.array([[r.robust - r.ci[0], r.ci[1] - r.robust] for r in series]).T
        ax.errorbar(
            xs, ys, yerr=err, marker="o", capsize=3, label=f"{defence_label(defence)}, {threat}"
        )
    ax.set_xlabel("PGD steps" if axis == "steps" else "ε (pixel units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    devices = _devices(rows)
    ax.set_title(
        f"PGD {'steps' if axis == 'steps' else 'ε'} sweep (device: {devices})", fontsize=10
    )
    return _save(plt, fig, out / f"sweep_{axis}.png"), devices


def _roc(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.unique(np.concatenate([negatives, positives]))[::-1]
    fpr = [0.0] + [float((negatives >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((positives >= t).mean()) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def detection(data: StudyData, out: Path) -> list[tuple[Path, str]]:
    """One ROC plot per detection stage: each setting's fooling examples against the clean
    images, for the mean noise level and every other score."""
    made = []
    for summary in data.detection:
        files = [
            f for f in data.stage_files.get(summary["stage"], []) if f.get("purpose") == "detection"
        ]
        files = [f for f in files if f.get("fooled")]
        if not files:
            continue
        scores = [s for s in SCORES if all(s in f["scores"] for f in files)]
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 4), squeeze=False)
        for ax, score in zip(axes[0], scores, strict=True):
            for f in files:
                clean = np.asarray(f["clean_scores"][score])
                attacked = np.asarray(f["scores"][score])[np.asarray(f["fooled"], dtype=int)]
                fpr, tpr = _roc(clean, attacked)
                ax.plot(fpr, tpr, label=f"{f['threat_model']} {attack_label(f['attack'])}")
            ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
            ax.set_title(score, fontsize=10)
            ax.set_xlabel("false-positive rate (clean)")
            ax.set_ylabel("true-positive rate (fooling examples)")
            ax.legend(fontsize=7)
        devices = ", ".join(sorted({f.get("device") or "?" for f in files}))
        fig.suptitle(f"{summary['stage']}: detector ROC (device: {devices})", fontsize=10)
        made.append((_save(plt, fig, out / f"detection_{summary['stage']}.png"), devices))
    return made


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
