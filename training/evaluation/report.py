"""Statistics, sanity checks and the written report of an evaluation (``summary.md`` and
PNG plots). Works on the result records ``suite.py`` writes, one dict each."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054
LARGE_EPS = 0.5
LARGE_EPS_STEPS = 20
LARGE_EPS_MAX_ACCURACY = 5.0  # percent: a working attack at eps 0.5 leaves almost nothing
MAX_ZERO_GRADIENT_FRACTION = 0.1

ATTACK_LABELS = {
    "gaussian": "Gaussian",
    "fgsm": "FGSM",
    "ifgsm": "I-FGSM",
    "mifgsm": "MI-FGSM",
    "pgd": "PGD",
    "cw": "CW",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "fab-t": "FAB-T",
    "square": "Square",
    "autoattack": "AutoAttack",
    "bpda-eot": "BPDA+EOT",
}


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent (``(0, 100)`` when n = 0)."""
    if n == 0:
        return 0.0, 100.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def accuracy_fields(prefix: str, correct: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(correct, n)
    return {
        f"{prefix}_correct": int(correct),
        f"{prefix}_accuracy": 100.0 * correct / n if n else 0.0,
        f"{prefix}_ci95": [round(lo, 3), round(hi, 3)],
    }


# --------------------------------------------------------------------------- sanity checks


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "detail": detail}


def _label(r: dict[str, Any]) -> str:
    steps = f"^{r['steps']}" if r.get("steps") else ""
    return f"{r['defence']}/{r['threat_model']}/{r['attack']}{steps}@eps={r['eps']:.4g}"


def sanity_checks(
    results: Sequence[dict[str, Any]], gradient_checks: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The checks that catch an evaluation reporting robustness it did not measure:

    * a PGD-20 attack at eps 0.5 leaves (nearly) nothing correct under every threat model;
    * robust accuracy does not rise with more steps or a larger eps beyond the 95% interval;
    * a transfer (black-box) attack is not stronger than the best white-box attack;
    * input gradients of every attacked model are finite and non-zero.
    """
    table = [r for r in results if r.get("purpose") == "table"]
    return (
        _large_eps_checks(results)
        + _monotone_checks(table, "eps", "steps")
        + _monotone_checks(table, "steps", "eps")
        + _transfer_checks(table)
        + _gradient_checks(gradient_checks)
    )


def _large_eps_checks(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for r in results:
        if r.get("purpose") != "sanity-large-eps":
            continue
        lo = r["robust_ci95"][0]
        checks.append(
            _check(
                "large-eps",
                lo <= LARGE_EPS_MAX_ACCURACY,
                f"{_label(r)}: {r['robust_accuracy']:.1f}% robust (95% CI low {lo:.1f}%, "
                f"limit {LARGE_EPS_MAX_ACCURACY:.0f}%)",
            )
        )
    return checks


def _monotone_checks(table: list[dict[str, Any]], key: str, fixed: str) -> list[dict[str, Any]]:
    """Robust accuracy against ``key`` (eps or steps) at each ``fixed`` value: any later
    (stronger) setting above an earlier one's 95% interval is a failure."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in table:
        if r["attack"] == "gaussian" or (key == "steps" and r.get("steps") is None):
            continue
        groups[(r["defence"], r["threat_model"], r["attack"], r.get(fixed))].append(r)
    checks = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        rows = sorted(rows, key=lambda r: r[key])
        rises = [
            (a, b)
            for i, a in enumerate(rows)
            for b in rows[i + 1 :]
            if b["robust_accuracy"] > a["robust_ci95"][1]
        ]
        curve = " -> ".join(f"{r['robust_accuracy']:.1f}% ({key} {r[key]:.4g})" for r in rows)
        first = rows[0]
        detail = (
            f"{first['defence']}/{first['threat_model']}/{first['attack']} "
            f"({fixed} {first.get(fixed)}): {curve}"
        )
        if rises:
            a, b = rises[0]
            detail += f"; {b['robust_accuracy']:.1f}% at {key} {b[key]:.4g} is above the "
            detail += f"interval of {key} {a[key]:.4g} ({a['robust_ci95'][1]:.1f}%)"
        checks.append(_check(f"monotone-{key}", not rises, detail))
    return checks


def _transfer_checks(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    white: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in table:
        if r["threat_model"] in ("white-box", "end-to-end", "bpda"):
            white[(r["defence"], r["attack"], r["eps"], r.get("steps"))].append(r)
    checks = []
    for r in table:
        if r["threat_model"] != "transfer":
            continue
        rivals = white.get((r["defence"], r["attack"], r["eps"], r.get("steps")))
        if not rivals:
            continue
        best = min(rivals, key=lambda w: w["robust_accuracy"])
        checks.append(
            _check(
                "transfer-weaker",
                r["robust_accuracy"] >= best["robust_ci95"][0],
                f"{_label(r)}: transfer {r['robust_accuracy']:.1f}% vs white-box "
                f"({best['threat_model']}) {best['robust_accuracy']:.1f}%",
            )
        )
    return checks


def _gradient_checks(gradient_checks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for g in gradient_checks:
        ok = g["nonfinite_fraction"] == 0 and g["zero_fraction"] <= MAX_ZERO_GRADIENT_FRACTION
        checks.append(
            _check(
                "gradients",
                ok,
                f"{g['defence']}/{g['threat_model']}/{g['model']} surrogate {g['surrogate']}: "
                f"{100 * g['zero_fraction']:.0f}% of samples with zero input gradient, "
                f"{100 * g['nonfinite_fraction']:.0f}% non-finite (mean |grad| "
                f"{g['mean_abs']:.3g})",
            )
        )
    return checks


# --------------------------------------------------------------------------- summary


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    lo, hi = r["robust_ci95"]
    return f"{r['robust_accuracy']:.1f} [{lo:.1f}, {hi:.1f}]"


def _columns(results: Iterable[dict[str, Any]], attacks: Sequence[str]) -> list[tuple]:
    """Table columns in the requested attack order; PGD gets one column per step count."""
    steps_of: dict[str, set] = defaultdict(set)
    for r in results:
        steps_of[r["attack"]].add(r.get("steps"))
    cols = []
    for a in attacks:
        for s in sorted(steps_of.get(a, ()), key=lambda v: v or 0):
            cols.append((a, s))
    return cols


def _col_label(col: tuple) -> str:
    attack, steps = col
    label = ATTACK_LABELS.get(attack, attack)
    return f"{label}^{steps}" if attack in ("pgd",) and steps else label


def render_summary(
    results: Sequence[dict[str, Any]],
    checks: Sequence[dict[str, Any]],
    *,
    header: dict[str, Any],
    defences: Sequence[str],
    threat_models: Sequence[str],
    attacks: Sequence[str],
    plots: Sequence[str] = (),
) -> str:
    """Markdown laid out like the paper's Tables 1-4: rows defence, columns attack."""
    table = [r for r in results if r.get("purpose") == "table"]
    lines = _summary_header(checks, header)
    for threat in threat_models:
        lines += _threat_tables(table, threat, defences, attacks)
    lines += _transfer_table(table, defences)
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    lines += ["## Sanity checks", ""]
    for c in checks:
        lines.append(f"- {'ok' if c['passed'] else '**FAILED**'} [{c['check']}] {c['detail']}")
    lines.append("")
    return "\n".join(lines)


def _summary_header(checks: Sequence[dict[str, Any]], header: dict[str, Any]) -> list[str]:
    failed = [c for c in checks if not c["passed"]]
    lines = [f"# Robustness evaluation: {header.get('name', '')}", ""]
    if failed:
        lines += [
            f"**FAILED: {len(failed)} of {len(checks)} sanity checks failed** "
            "(see the end of this file); robust accuracies below are not trustworthy "
            "where a check failed.",
            "",
        ]
    else:
        lines += [f"All {len(checks)} sanity checks passed.", ""]
    for key, value in header.items():
        if key != "name":
            lines.append(f"- {key}: {value}")
    return lines + [
        "",
        "Cells: robust accuracy % [95% Wilson interval]. A sample counts as robust "
        "only if it is classified correctly clean and survives every surrogate gradient "
        "(and every source model for transfer).",
        "",
    ]


def _threat_tables(
    table: list[dict[str, Any]], threat: str, defences: Sequence[str], attacks: Sequence[str]
) -> list[str]:
    """One table per eps for ``threat``: rows defence (white-box results shared), columns
    attack, the noise test alongside."""
    noise = [r for r in table if r["threat_model"] == "noise"]
    shared_threat = "white-box" if threat != "transfer" else ""
    rows_of = {
        d: [r for r in table if r["defence"] == d and r["threat_model"] in (threat, shared_threat)]
        for d in defences
    }
    all_rows = [r for rows in rows_of.values() for r in rows]
    lines: list[str] = []
    for eps in sorted({r["eps"] for r in all_rows}):
        at_eps = [r for r in all_rows if r["eps"] == eps]
        cols = _columns(at_eps + noise, attacks)
        lines += [f"## Threat model: {threat}, eps = {eps:.4g} ({eps * 255:.3g}/255)", ""]
        head = ["Defence", "Clean"] + [_col_label(c) for c in cols]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in defences:
            rows = [r for r in rows_of[d] if r["eps"] == eps]
            rows += [r for r in noise if r["defence"] == d]
            if not rows:
                continue
            by_col = {(r["attack"], r.get("steps")): r for r in rows}
            clean = rows[0]
            lo, hi = clean["clean_ci95"]
            shared = " (white-box)" if rows[0]["threat_model"] == "white-box" else ""
            cells = [f"{d}{shared}", f"{clean['clean_accuracy']:.1f} [{lo:.1f}, {hi:.1f}]"]
            cells += [_cell(by_col.get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _transfer_table(table: list[dict[str, Any]], defences: Sequence[str]) -> list[str]:
    transfer = [r for r in table if r["threat_model"] == "transfer" and r.get("per_source")]
    if not transfer:
        return []
    lines = ["## Transfer attacks by source model (layout of the paper's Table 3)", ""]
    sources = sorted({s for r in transfer for s in r["per_source"]})
    head = ["Source model", "Attack", "eps"] + list(defences)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(r["attack"], r.get("steps") or 0, r["eps"]) for r in transfer})
    for source in sources:
        for attack, steps, eps in keys:
            cells = [source, _col_label((attack, steps or None)), f"{eps:.4g}"]
            for d in defences:
                match = [
                    r
                    for r in transfer
                    if r["defence"] == d
                    and (r["attack"], r.get("steps") or 0, r["eps"]) == (attack, steps, eps)
                ]
                per = match[0]["per_source"].get(source) if match else None
                cells.append(_cell(per))
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# --------------------------------------------------------------------------- plots


def plot_curves(
    results: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    threat_models: Sequence[str],
    defences: Sequence[str],
    primary_eps: float,
    primary_steps: int,
) -> list[str]:
    """Robust accuracy (PGD) against eps and against steps, one PNG each per threat model,
    every defence on the same axes (the paper's Figure 5). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pgd = [r for r in results if r.get("purpose") == "table" and r["attack"] == "pgd"]
    written: list[str] = []
    for threat in threat_models:
        shared = "white-box" if threat != "transfer" else None
        rows = [r for r in pgd if r["threat_model"] in (threat, shared)]
        sweeps = (("eps", "steps", primary_steps), ("steps", "eps", primary_eps))
        for axis, fixed_key, fixed in sweeps:
            series = {
                d: sorted(
                    (r for r in rows if r["defence"] == d and r[fixed_key] == fixed),
                    key=lambda r: r[axis],
                )
                for d in defences
            }
            if max((len(s) for s in series.values()), default=0) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.6))
            for d, rs in series.items():
                if not rs:
                    continue
                xs = [r[axis] * 255 if axis == "eps" else r[axis] for r in rs]
                ys = [r["robust_accuracy"] for r in rs]
                err = [
                    [y - r["robust_ci95"][0] for y, r in zip(ys, rs, strict=True)],
                    [r["robust_ci95"][1] - y for y, r in zip(ys, rs, strict=True)],
                ]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=d)
            ax.set_xlabel("eps (x/255)" if axis == "eps" else "PGD steps")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_ylim(0, 100)
            subtitle = f"PGD^{fixed}" if axis == "eps" else f"eps {fixed * 255:.3g}/255"
            ax.set_title(f"{threat}: {subtitle}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"pgd_vs_{axis}_{threat}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(str(path))
    return written
