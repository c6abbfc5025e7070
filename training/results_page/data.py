"""What the results page shows, read from a study directory: ``results.json`` (written by
``training.study_state.write_results``), the stage files beside it, and the study's plan, so
that every planned row appears, measured or not.

A ``Row`` is one planned or measured evaluation setting; ``row.result`` is its record from
``results.json`` or ``None`` (then the page says "not yet measured", never a number).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = "not yet measured"


def eps_key(eps: float | None) -> float | None:
    return None if eps is None else round(float(eps), 5)


@dataclass
class Row:
    stage: str
    defence: str
    threat_model: str
    attack: str
    eps: float | None
    steps: int | None
    purpose: str = "table"
    result: dict[str, Any] | None = None
    stage_state: str = ""  # from results.json: done / partial / pending / cut

    @property
    def key(self) -> tuple:
        return (
            self.stage,
            self.defence,
            self.threat_model,
            self.attack,
            eps_key(self.eps),
            self.steps,
        )

    @property
    def measured(self) -> bool:
        return self.result is not None and self.result.get("robust_accuracy") is not None

    @property
    def robust(self) -> float | None:
        return self.result["robust_accuracy"] if self.measured else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return tuple(self.result["robust_ci95"]) if self.measured else None


@dataclass
class StudyData:
    root: Path
    preset: str
    dataset: str | None
    eval_eps: float | None
    rows: list[Row]
    stages: list[dict[str, Any]]
    cut_from_plan: list[dict[str, Any]]
    training: dict[str, dict[str, Any]]
    train_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    detection: list[dict[str, Any]] = field(default_factory=list)
    # planned detection settings by stage: (threat model, attack, steps)
    detection_plan: dict[str, list[tuple]] = field(default_factory=dict)
    plan_error: str | None = None
    budget_hours: float | None = None  # the budget results.json's cuts were made against

    def select(self, stage_prefix: str | tuple[str, ...], purpose: str = "table") -> list[Row]:
        return [r for r in self.rows if r.stage.startswith(stage_prefix) and r.purpose == purpose]

    def stage_state(self, name: str) -> str:
        for s in self.stages:
            if s.get("name") == name:
                return s.get("state", "pending")
        return "not in the plan"


def _planned_rows(preset: str, root: Path) -> tuple[list[Row], dict[str, list[tuple]]]:
    """Every setting the study's plan holds (``training.study_state.eval_settings``, which
    plans without loading a model), and the planned detection settings by stage."""
    from ..detection.suite import plan as detection_settings
    from ..study_plan import DetectStage, EvalStage, study_plan
    from ..study_state import detect_config, eval_settings

    args = argparse.Namespace(data_dir=None, device="cpu", progress=False)
    rows, detection = [], {}
    for stage in study_plan(preset).stages:
        if isinstance(stage, DetectStage):
            items = detection_settings(detect_config(stage, root, args))
            detection[stage.name] = [(i["threat"], i["attack"], i["steps"]) for i in items]
        if not isinstance(stage, EvalStage):
            continue
        for item in eval_settings(stage, root, args):
            rows.append(
                Row(
                    stage.name,
                    item["defence"].name,
                    item["threat"],
                    item["attack"],
                    item["eps"],
                    item["steps"],
                    item["purpose"],
                )
            )
    return rows, detection


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load(root: str | Path) -> StudyData:
    """Reads ``root/results.json`` and the stage files; raises ``FileNotFoundError`` when
    there is no ``results.json``."""
    root = Path(root)
    payload = json.loads((root / "results.json").read_text())
    preset = payload.get("preset", "?")
    dataset = eval_eps = None
    plan_error = None
    try:
        from ..presets import get_preset

        info = get_preset(preset)
        dataset, eval_eps = info.dataset, info.eval_eps
        planned, detection_plan = _planned_rows(preset, root)
    except Exception as exc:  # an unknown or changed preset: show what was measured
        planned, detection_plan, plan_error = [], {}, f"{type(exc).__name__}: {exc}"
    rows = {r.key: r for r in planned}
    for record in payload.get("evaluation", []):
        if record.get("purpose") == "detection":
            continue
        row = Row(
            record["stage"],
            record["defence"],
            record["threat_model"],
            record["attack"],
            record.get("eps"),
            record.get("steps"),
            record.get("purpose") or "table",
        )
        rows.setdefault(row.key, row).result = record
    states = {s.get("name"): s.get("state", "") for s in payload.get("stages", [])}
    for row in rows.values():
        row.stage_state = states.get(row.stage, "")
    data = StudyData(
        root=root,
        preset=preset,
        dataset=dataset,
        eval_eps=eval_eps,
        rows=list(rows.values()),
        stages=payload.get("stages", []),
        cut_from_plan=payload.get("cut_from_plan", []),
        training=payload.get("training", {}),
        plan_error=plan_error,
        detection_plan=detection_plan,
        budget_hours=payload.get("budget_hours"),
    )
    for name in data.training:
        config = _read_json(root / name / "config.json")
        if config is not None:
            data.train_configs[name] = config
    for stage_dir in sorted((root / "eval").glob("*")) if (root / "eval").is_dir() else []:
        files = [_read_json(p) for p in sorted(stage_dir.glob("*/*/*.json"))]
        data.stage_files[stage_dir.name] = [f for f in files if f is not None]
        summary = _read_json(stage_dir / "detection.json")
        if summary is not None:
            data.detection.append({"stage": stage_dir.name, **summary})
    return data


def per_source(data: StudyData, stage: str) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Transfer results by source model: ``(defence, attack, eps, steps) -> {source: fields}``
    from the stage's result files (``results.json`` keeps only the worst case)."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in data.stage_files.get(stage, []):
        if r.get("threat_model") == "transfer" and r.get("per_source"):
            key = (r["defence"], r["attack"], eps_key(r.get("eps")), r.get("steps"))
            out[key] = r["per_source"]
    return out
