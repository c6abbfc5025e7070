"""Run directories: ``runs/<name>/`` with ``config.json``, ``metrics.jsonl``,
``latest.safetensors`` (resumable), ``best.safetensors`` and, at the end, ``curves.png``.

A run directory that already holds a run is never reused silently: ``--resume`` continues
it (with the same configuration), ``--force`` moves the old one aside to
``<name>.replaced-<time>`` and starts afresh. Nothing is deleted.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LATEST = "latest.safetensors"
BEST = "best.safetensors"


def prepare_run_dir(run_dir: Path, config: Any, *, resume: bool, force: bool) -> bool:
    """Creates or checks ``run_dir``; returns True when training should resume from it."""
    config_dict = asdict(config) if is_dataclass(config) else dict(config)
    config_path = run_dir / CONFIG
    if resume and force:
        raise UsageError("--resume and --force exclude each other")
    if config_path.exists():
        if resume:
            saved = json.loads(config_path.read_text())
            diff = _config_diff(saved, json.loads(json.dumps(config_dict)), _defaults(config))
            if diff:
                raise UsageError(f"--resume with a different configuration ({diff}) in {run_dir}")
            return (run_dir / LATEST).exists()
        if not force:
            raise UsageError(
                f"{run_dir} already holds a run; use --resume to continue it or --force to "
                "start over (the old run is moved aside, not deleted)"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.replaced-{stamp}"))
    elif resume:
        raise UsageError(f"--resume: no run to resume in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config_dict, indent=2) + "\n")
    return False


_IGNORED_ON_RESUME = {"resume", "force", "device", "compile", "progress"}


def _defaults(config: Any) -> dict[str, Any]:
    """The configuration class's defaults (JSON-normalised), for settings a run saved before
    they existed."""
    if not is_dataclass(config):
        return {}
    values: dict[str, Any] = {}
    for f in fields(config):
        if f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
    return json.loads(json.dumps(values))


def _config_diff(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> str:
    """The settings that differ; one missing on either side counts as its default (a run
    saved before a setting existed ran with the setting's default behaviour)."""
    defaults = defaults or {}
    keys = (set(saved) | set(current)) - _IGNORED_ON_RESUME

    def value(side: dict[str, Any], key: str) -> Any:
        return side.get(key, defaults.get(key))

    changed = sorted(k for k in keys if value(saved, k) != value(current, k))
    return ", ".join(f"{k}: {value(saved, k)!r} -> {value(current, k)!r}" for k in changed)


class MetricsLog:
    """Append-only JSONL of per-epoch records."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drops records of epochs after ``epoch`` (written before an interruption that the
        checkpoint did not capture), so a resumed run's log has each epoch once."""
        kept = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_curves(run_dir: Path) -> Path | None:
    """Loss and accuracy against epoch, from ``metrics.jsonl``, as ``curves.png``."""
    records = MetricsLog(run_dir).read()
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    loss_keys = [k for k in records[-1] if k.endswith("loss")]
    acc_keys = [k for k in records[-1] if k.endswith("acc")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in loss_keys:
        axes[0].plot(epochs, [r.get(key) for r in records], marker="o", label=key)
    for key in acc_keys:
        axes[1].plot(epochs, [r.get(key) for r in records], marker="o", label=key)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
