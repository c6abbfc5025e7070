"""Formatting shared by the page's sections: cells, labels and Markdown tables. Numbers
come only from result records; a missing one is written as ``MISSING``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..evaluation.report import ATTACK_LABELS
from .data import MISSING, Row

DEFENCE_ORDER = (
    "none",
    "adv-training",
    "purifier",
    "purifier-paper",
    "purifier-adaptive",
    "purifier+adv",
    "purifier@resnet20",
)
THREAT_ORDER = ("white-box", "classifier-only", "end-to-end", "bpda", "transfer", "noise")
DEFENCE_LABELS = {
    "none": "no defence",
    "adv-training": "adversarial training",
    "purifier": "purifier (shipped)",
    "purifier-paper": "purifier (paper's Algorithm 1)",
    "purifier-adaptive": "purifier (adaptive: trained on attacks through itself)",
    "purifier+adv": "purifier + adversarial training",
    "purifier@resnet20": "purifier in front of ResNet20-SNN",
}
WHITE_BOX_THREATS = ("white-box", "classifier-only", "end-to-end", "bpda")
EXTRA_ATTACK_LABELS = {
    "pgd-noise-aware": "adaptive PGD{steps} (CE - λ·noise level)",
    "pgd-residual-aware": "adaptive PGD{steps} (CE - λ·residual)",
}


def attack_label(attack: str, steps: int | None = None) -> str:
    if attack in EXTRA_ATTACK_LABELS:
        return EXTRA_ATTACK_LABELS[attack].format(steps=f"-{steps}" if steps is not None else "")
    label = ATTACK_LABELS.get(attack, attack)
    return f"{label}-{steps}" if steps is not None else label


def defence_label(name: str) -> str:
    return DEFENCE_LABELS.get(name, name)


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} %"


def missing(row: Row | None) -> str:
    """``MISSING``, with "(stage cut)" where the budget cut the row's stage."""
    return f"{MISSING} (stage cut)" if row is not None and row.stage_state == "cut" else MISSING


def cell(row: Row | None) -> str:
    """``"28.5 % [22.6, 35.2]"``: robust accuracy and its Wilson 95 % interval."""
    if row is None or not row.measured:
        return missing(row)
    lo, hi = row.ci
    return f"{row.robust:.1f} % [{lo:.1f}, {hi:.1f}]"


def clean_cell(row: Row | None) -> str:
    if row is None or not row.measured or row.result.get("clean_accuracy") is None:
        return missing(row)
    lo, hi = row.result.get("clean_ci95") or (None, None)
    interval = f" [{lo:.1f}, {hi:.1f}]" if lo is not None else ""
    return f"{row.result['clean_accuracy']:.1f} %{interval}"


def n_cell(row: Row | None) -> str:
    return str(row.result.get("n")) if row is not None and row.measured else "-"


def device_cell(row: Row | None) -> str:
    return (row.result.get("device") or "?") if row is not None and row.measured else "-"


def overlap(a: Row, b: Row) -> bool:
    """Whether the two rows' 95 % intervals overlap."""
    return a.ci[0] <= b.ci[1] and b.ci[0] <= a.ci[1]


def overlap_verdict(a: Row, b: Row) -> str:
    return "the 95 % intervals overlap" if overlap(a, b) else "the intervals do not overlap"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def sort_key(row: Row) -> tuple:
    def index(seq: Sequence[str], value: str) -> int:
        return seq.index(value) if value in seq else len(seq)

    return (
        index(DEFENCE_ORDER, row.defence),
        row.defence,
        index(THREAT_ORDER, row.threat_model),
        row.attack,
        row.eps or 0.0,
        row.steps or 0,
    )


def describe(row: Row) -> str:
    """``"APGD-CE end-to-end: 28.5 % [22.6, 35.2] (N = 1000)"``."""
    return (
        f"{attack_label(row.attack, row.steps)} {row.threat_model}: {cell(row)} (N = {n_cell(row)})"
    )


def not_measured_note(rows: Sequence[Row]) -> str:
    missing = sum(not r.measured for r in rows)
    if not rows:
        return "No row of this table is in the study's plan."
    if missing == len(rows):
        return f"None of the {len(rows)} planned rows is measured yet."
    if missing:
        return f"{missing} of the {len(rows)} planned rows are not yet measured."
    return f"All {len(rows)} planned rows are measured."
