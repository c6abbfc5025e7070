"""The page's other sections: training time (Figure 4), the PGD sweeps (Figure 5), the
noise level as a detector, and the study's stages (pending, cut, devices)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from . import paper
from .data import MISSING, Row, StudyData, eps_key
from .text import attack_label, cell, defence_label, overlap, pct, sort_key, table


def _hours(seconds: float | None) -> str:
    return MISSING if seconds is None else f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"


def training_time(data: StudyData) -> list[str]:
    lines = ["## Training time: the purifier vs adversarial training (the paper's Figure 4)", ""]
    names = [s["name"] for s in data.stages if s.get("kind") == "train"]
    names += [name for name in data.training if name not in names]
    states = {s["name"]: f"{s.get('state', '?')}, {s.get('progress', '')}" for s in data.stages}
    body = []
    for name in names:
        info = data.training.get(name)
        config = data.train_configs.get(name, {})
        schedule = (
            f"{config.get('epochs')} epochs, {config.get('subset') or 'all'} images"
            if config
            else "-"
        )
        body.append(
            (
                name,
                info["command"] if info else "-",
                states.get(name, "done" if info else "?"),
                _hours(info and info.get("train_seconds")),
                schedule,
                (info or {}).get("device") or "-",
            )
        )
    lines += (
        table(("stage", "command", "state", "training time", "schedule", "device"), body)
        if body
        else ["No training stage is in results.json yet."]
    )
    purifier = (data.training.get("purifier") or {}).get("train_seconds")
    adv = (data.training.get("clf-k3-adv") or {}).get("train_seconds")
    clf = (data.training.get("clf-k3") or {}).get("train_seconds")
    lines.append("")
    if purifier and adv:
        reduction = 100 * (1 - purifier / adv)
        text = (
            f"Training the purifier took {_hours(purifier)}, adversarial training "
            f"{_hours(adv)}: {_less_or_more(reduction)} time (the paper: "
            f"{paper.FIGURE4_REDUCTION} % less on average over its three datasets)."
        )
        if clf:
            both = 100 * (1 - (purifier + clf) / adv)
            text += (
                " Counting the standard classifier the purifier needs (trained on its own "
                f"schedule, {_hours(clf)}), {_less_or_more(both)}."
            )
        text += (
            " The schedules are not the same (see the table), and times on different "
            "devices or on a shared machine do not compare directly."
        )
        lines.append(text)
    else:
        lines.append(
            "The comparison needs both the purifier and the adversarially trained "
            f"classifier: {MISSING}. The paper reports {paper.FIGURE4_REDUCTION} % less "
            "training time on average."
        )
    return lines + [""]


def sweep_lines(rows: list[Row], axis: str) -> dict[tuple[str, str], list[Row]]:
    lines: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        lines[(r.defence, r.threat_model)].append(r)
    for key in lines:
        lines[key].sort(key=lambda r: (r.steps or 0) if axis == "steps" else (r.eps or 0.0))
    return dict(sorted(lines.items(), key=lambda kv: sort_key(kv[1][0])))


def sweeps(data: StudyData) -> list[str]:
    out = ["## PGD step and ε sweeps (the paper's Figure 5)", ""]
    for stage, axis in (("figure5-steps", "steps"), ("figure5-eps", "eps")):
        rows = data.select(stage)
        lines = sweep_lines(rows, axis)
        xs = sorted({(r.steps if axis == "steps" else eps_key(r.eps)) for r in rows} - {None})
        header = [
            "defence",
            "threat model",
            *(f"{x:g}" if axis == "eps" else f"PGD-{x}" for x in xs),
        ]
        body = []
        for (defence, threat), series in lines.items():
            by_x = {(r.steps if axis == "steps" else eps_key(r.eps)): r for r in series}
            body.append((defence_label(defence), threat, *(cell(by_x.get(x)) for x in xs)))
        title = (
            "robust accuracy against PGD steps" if axis == "steps" else "robust accuracy against ε"
        )
        out += [f"**{title}**", ""]
        out += table(header, body) if body else ["Not in the study's plan."]
        out += ["", " ".join(_monotone_sentences(lines, axis)) or "No sweep is measured yet.", ""]
    out += [
        "**The paper's figures** (Figure 5, PGD with step 2/255 on CIFAR-100 and SVHN, "
        "read from its text): "
        + "; ".join(paper.FIGURE5_STEPS)
        + "; "
        + "; ".join(
            f"{d}: {a:.2f} % at ε = {ea * 255:.0f}/255, {b:.2f} % at ε = {eb * 255:.0f}/255"
            for d, ((ea, a), (eb, b)) in paper.FIGURE5_EPS.items()
        )
        + ".",
        "",
    ]
    return out


def _monotone_sentences(lines: dict[tuple[str, str], list[Row]], axis: str) -> list[str]:
    out = []
    for (defence, threat), series in lines.items():
        measured = [r for r in series if r.measured]
        if len(measured) < 2:
            continue
        ups = [(a, b) for a, b in zip(measured, measured[1:], strict=False) if b.ci[0] > a.ci[1]]
        what = "more steps" if axis == "steps" else "a larger ε"
        name = f"{defence_label(defence)} ({threat})"
        if ups:
            a, b = ups[0]
            out.append(
                f"{name}: {what} helped the defender beyond the intervals "
                f"({pct(a.robust)} -> {pct(b.robust)}): a sign of a weak or masked attack."
            )
        else:
            out.append(
                f"{name}: {what} never helped the defender beyond the intervals "
                f"({pct(measured[0].robust)} -> {pct(measured[-1].robust)})."
                + (_convergence(measured[-2], measured[-1]) if axis == "steps" else "")
            )
    return out


def _convergence(before: Row, last: Row) -> str:
    """Whether a PGD step sweep has levelled off at its last two points."""
    if overlap(before, last):
        return (
            f" It levels off: PGD-{before.steps} and PGD-{last.steps} agree within their intervals."
        )
    return (
        f" It is still falling at PGD-{last.steps} ({pct(before.robust)} at PGD-{before.steps}, "
        "the intervals do not overlap): a longer attack would find more, so the last "
        "column is an upper bound."
    )


def detection(data: StudyData) -> list[str]:
    out = [
        "## The noise level as an attack detector",
        "",
        "The paper reports no detector; these figures have no counterpart there.",
        "",
    ]
    summaries = {s["stage"]: s for s in data.detection}
    names = list(data.detection_plan) + [n for n in summaries if n not in data.detection_plan]
    if not names:
        return out + [f"Detection: {MISSING} (no detection stage in the plan or on disk).", ""]
    for name in names:
        summary = summaries.get(name, {"stage": name, "results": []})
        out += _detection_summary(summary, data.detection_plan.get(name, []))
    return out


def _auc(entry: dict | None, which: str = "fooled") -> str:
    if entry is None or entry.get(f"auc_{which}") is None:
        return "-"
    lo, hi = entry[f"auc_{which}_ci95"]
    return f"{entry[f'auc_{which}']:.3f} [{lo:.3f}, {hi:.3f}]"


def _rate(entry: dict | None) -> str:
    if entry is None or entry.get("percent") is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['percent']:.1f} % [{lo:.1f}, {hi:.1f}] of {entry['n']}"


def _detection_summary(summary: dict, planned: list[tuple]) -> list[str]:
    config = summary.get("config", {})
    out = [
        f"**{summary['stage']}**: {config.get('defence', '')}, ε = {config.get('eps', '?')}, "
        f"threshold at {100 * config.get('fpr', 0.05):g} % false positives on the clean "
        "images of the calibration half; AUC of clean vs the examples that fool the pipeline "
        "(DeLong 95 % interval).",
        "",
    ]
    done = {(r["threat_model"], r["attack"], r.get("steps")) for r in summary.get("results", [])}
    body = [
        (threat, attack_label(attack, steps), "every score", *([MISSING] * 5), "-")
        for threat, attack, steps in planned
        if (threat, attack, steps) not in done
    ]
    for row in summary.get("results", []):
        for name, entry in row["detection"].items():
            body.append(
                (
                    row["threat_model"],
                    attack_label(row["attack"], row.get("steps")),
                    name,
                    _auc(entry),
                    _auc(entry, "all"),
                    _rate(entry["tpr_fooled"]),
                    _rate(entry["fpr_held_out"]),
                    _rate(entry["fooled_and_passed"]),
                    row.get("device", "?"),
                )
            )
    header = (
        "threat model",
        "attack",
        "score",
        "AUC, fooling examples",
        "AUC, all attacked",
        "detected (TPR)",
        "FPR held out",
        "fool the pipeline undetected",
        "device",
    )
    out += table(header, body) + [""]
    out += [" ".join(_detection_sentences(summary)), ""]
    return out


def _detection_sentences(summary: dict) -> list[str]:
    out = []
    rows = summary.get("results", [])
    for row in rows:
        mean = row["detection"]["mean"]
        if mean.get("auc_fooled") is None:
            out.append(
                f"{row['threat_model']} {attack_label(row['attack'], row.get('steps'))} fooled "
                "the pipeline on none of these images: there is no AUC over fooling examples "
                f"(over all attacked images: {_auc(mean, 'all')})."
            )
            continue
        auc = mean["auc_fooled"]
        sense = (
            "attacked images score *lower* than clean ones"
            if auc < 0.5
            else "close to chance"
            if auc < 0.6
            else "a usable signal"
            if auc < 0.9
            else "a strong signal"
        )
        out.append(
            f"{row['threat_model']} {attack_label(row['attack'], row.get('steps'))}: the "
            f"mean noise level separates fooling examples from clean images with AUC "
            f"{_auc(mean)} ({sense})."
        )
        adaptive = row.get("adaptive")
        if adaptive:
            plain = next(
                (r for r in rows if r["threat_model"] == "end-to-end" and "adaptive" not in r), None
            )
            # results written before the residual-aware attack name the means by the noise
            detector = adaptive.get("detector", "mean")
            what = "mean noise level" if detector == "mean" else "residual |purified - input|"
            levels = ", ".join(
                f"λ = {b['lambda']:g}: {b.get('mean_score', b.get('mean_noise_level')):.4f}"
                for b in adaptive["by_lambda"]
            )
            clean = adaptive.get("clean_mean_score", adaptive.get("clean_mean_noise_level"))
            plain_rate = (
                f", against {_rate(plain['detection'][detector]['fooled_and_passed'])} for "
                "the plain end-to-end attack"
                if plain and detector in plain.get("detection", {})
                else ""
            )
            own = row["detection"].get(detector, {})
            own_auc = (
                f" (that score's AUC on its fooling examples: {_auc(own)})"
                if detector != "mean" and own.get("auc_fooled") is not None
                else ""
            )
            out.append(
                f"The attacker who keeps the {what} low fools the pipeline undetected by that "
                f"score on {_rate(adaptive['fooled_and_passed'])}{plain_rate}{own_auc}; the "
                f"{what} of its examples by λ: {levels} (clean {clean:.4f})."
            )
    best = summary.get("best_alternative")
    if best:
        # an attacker who also keeps that score low: the test of the lead, where measured
        against = next(
            (
                r["adaptive"]
                for r in rows
                if (r.get("adaptive") or {}).get("detector") == best["score"]
            ),
            None,
        )
        verdict = (
            "treat it as a lead, not a result"
            if against is None
            else "and an attacker who keeps it low fools the pipeline undetected by it on "
            f"{_rate(against['fooled_and_passed'])} (above): it does not hold up either"
        )
        out.append(
            f"The best alternative score on the end-to-end examples is {best['label']} "
            f"(AUC {best['auc_fooled']:.3f}, mean noise level {best['mean_auc_fooled']}); "
            f"it was chosen on these same images, {verdict}."
        )
    return out


def stages(data: StudyData) -> list[str]:
    out = ["## The study's stages", ""]
    body = []
    for s in data.stages:
        left = s.get("left_s")
        body.append(
            (
                s.get("group", "?"),
                s["name"],
                s.get("kind", "?"),
                s.get("state", "?"),
                s.get("progress", ""),
                f"{(s.get('spent_s') or 0) / 3600:.2f}",
                "?" if left is None else f"{left / 3600:.2f}",
                s.get("device") or "-",
            )
        )
    header = (
        "group",
        "stage",
        "kind",
        "state",
        "progress",
        "core-h spent",
        "core-h left",
        "device",
    )
    out += table(header, body) if body else ["results.json lists no stage."]
    waiting = [s["name"] for s in data.stages if s.get("state") in ("pending", "partial")]
    cut = [s["name"] for s in data.stages if s.get("state") == "cut"]
    budget = "" if data.budget_hours is None else f" ({data.budget_hours:g} core-hours)"
    out += [
        "",
        f"Pending or partial: {', '.join(waiting) if waiting else 'none'}. "
        f"Cut because its estimate did not fit in what was left of the study's core-hour "
        f"budget{budget} after every stage's spent time and the estimates of the stages "
        f"before it (a stage also when one it needs is cut, a training stage when every row "
        f"that needs it is cut): {', '.join(cut) if cut else 'none'}.",
    ]
    if data.cut_from_plan:
        out += ["", "Rows left out of the plan:", ""]
        out += [f"- **{c['row']}**: {c['reason']}" for c in data.cut_from_plan]
    devices = {s.get("device") for s in data.stages}
    devices |= {v.get("device") for v in data.training.values()}
    devices |= {r.result.get("device") for r in data.rows if r.measured}
    devices = sorted(d for d in devices if d)
    out += [
        "",
        "Devices of the figures: "
        + (", ".join(devices) if devices else MISSING)
        + " (each table names the device of each row).",
    ]
    if data.plan_error:
        out += [
            "",
            f"The study's plan could not be read ({data.plan_error}); the tables show "
            "the measured rows only.",
        ]
    return out + [""]


def sanity(data: StudyData) -> list[str]:
    rows = [r for r in data.rows if r.purpose == "sanity-large-eps"]
    out = ["## Sanity: a large ε must leave almost nothing", ""]
    body = [
        (
            defence_label(r.defence),
            r.threat_model,
            attack_label(r.attack, r.steps),
            f"{r.eps:g}",
            cell(r),
        )
        for r in sorted(rows, key=sort_key)
    ]
    out += (
        table(("defence", "threat model", "attack", "ε", "robust [95 % CI]"), body)
        if body
        else ["No sanity row is in the plan."]
    )
    failing = [r for r in rows if r.measured and r.ci[0] > 5.0]
    if failing:
        out += [
            "",
            "FAILED: "
            + "; ".join(f"{defence_label(r.defence)} {r.threat_model} {cell(r)}" for r in failing)
            + " stays above 5 %: the attack does not work there, and the rows above it "
            "overstate robustness.",
        ]
    elif any(r.measured for r in rows):
        out += ["", "Every measured large-ε row leaves at most 5 % (lower end of its interval)."]
    return out + ["", *_result_checks(data.root), ""]


CHECK_LABELS = {
    "monotone-eps": "robust accuracy does not rise with ε",
    "monotone-steps": "robust accuracy does not rise with more steps",
    "transfer-weaker": "a transfer attack is not stronger than the white-box one",
    "gradients": "input gradients are finite and non-zero",
}


def _result_checks(root: Path) -> list[str]:
    """The checks each evaluation ran on its own results (``eval/<stage>/sanity.json``)."""
    counts: dict[str, int] = defaultdict(int)
    failed: list[str] = []
    stages = 0
    for path in sorted((root / "eval").glob("*/sanity.json")):
        checks = json.loads(path.read_text()).get("checks", [])
        checks = [c for c in checks if c["check"] != "large-eps"]  # the table above
        stages += bool(checks)
        for c in checks:
            counts[c["check"]] += 1
            if not c["passed"]:
                failed.append(f"{path.parent.name}: {c['detail']}")
    if not counts:
        return ["No evaluation has checked its results yet."]
    kinds = "; ".join(f"{CHECK_LABELS.get(k, k)}: {n}" for k, n in sorted(counts.items()))
    line = f"Checks each evaluation ran on its own results, in {stages} stages ({kinds}): "
    if failed:
        return [line + f"{len(failed)} FAILED: " + "; ".join(failed) + "."]
    return [line + "all pass."]


def _best_epoch(study: Path, stage: str, score: str) -> dict | None:
    """The epoch record of a training stage with the highest ``score`` (its best weights)."""
    path = study / stage / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if score in r]
    return max(records, key=lambda r: r[score]) if records else None


def served_model(data: StudyData, model_dir: Path, served: Path) -> list[str]:
    """The default model as exported (its manifest's accuracies on the test set), as served
    (``bench/served_accuracy.py`` over HTTP), and the two purifiers' validation figures
    that show what training on clean images as well buys."""
    lines = ["## The served default model", ""]
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        return lines + [f"No model in `{model_dir.as_posix()}`: not yet measured.", ""]
    manifest = json.loads(manifest_path.read_text())
    metrics = manifest.get("metrics", {})
    sources = {
        role: manifest.get("models", {}).get(role, {}).get("source_checkpoint", "?")
        for role in ("classifier", "purifier")
    }
    lines.append(
        f"`{model_dir.as_posix()}` ({manifest['name']} v{manifest['version']}): classifier from "
        f"`{sources['classifier']}`, purifier from `{sources['purifier']}`."
    )
    lines.append("")
    got = json.loads(served.read_text()) if served.is_file() else None
    if got and got.get("model") != f"{manifest['name']} v{manifest['version']}":
        got = None  # measured on another version of the bundle
    body = []
    for key, label in (("clean_accuracy", "bare"), ("purified_clean_accuracy", "purified")):
        exported = metrics.get(key)
        over_http = (got or {}).get(key, {}).get("served")
        body.append(
            (
                label,
                MISSING if exported is None else f"{100 * exported:.2f} %",
                str(metrics.get("eval_images", "-")),
                MISSING if over_http is None else f"{over_http:.2f} %",
                str(got["n"]) if got else "-",
            )
        )
    lines += table(
        ("classifier input", "ONNX Runtime at export", "N", "over HTTP (/classify)", "N"), body
    )
    lines.append("")
    if got:
        lines.append(
            "Over HTTP: `bench/served_accuracy.py --model-dir "
            f"{model_dir.as_posix()} --n {got['n']}` (`{served.as_posix()}`)."
        )
    else:
        lines.append("Over HTTP: not yet measured for this version (`bench/served_accuracy.py`).")
    lines.append("")
    rows = []
    for stage, label in (("purifier", "shipped"), ("purifier-paper", "paper's Algorithm 1")):
        best = _best_epoch(data.root, stage, "val_purified_mean_acc")
        if best is None:
            rows.append((f"{label} (`{stage}`)", MISSING, MISSING, MISSING, "-", "-"))
            continue
        config = data.train_configs.get(stage, {})
        rows.append(
            (
                f"{label} (`{stage}`)",
                f"{best['val_clean_acc']:.1f} %",
                f"{best['val_purified_clean_acc']:.1f} %",
                f"{best['val_purified_acc']:.1f} %",
                str(best["epoch"]),
                str(config.get("val_images", "?")),
            )
        )
    lines.append(
        "What the shipped purifier's training mix (a quarter clean images, FGSM epsilons drawn "
        "from [0, 2 eps]) buys over the paper's Algorithm 1 (FGSM at 2 eps only), on the "
        "validation images held out of the training split (N per purifier beside it), at "
        "each purifier's best epoch (the highest mean of its last two columns, which picks "
        "the weights it ships):"
    )
    lines.append("")
    lines += table(
        (
            "purifier",
            "bare clean",
            "purified clean",
            "purified FGSM (classifier-only)",
            "epoch",
            "N",
        ),  # fmt: skip
        rows,
    )
    return lines + [""]


def _less_or_more(reduction: float) -> str:
    """A relative time saving as words: 70.0 -> "70.0 % less", -61.4 -> "61.4 % more"."""
    return f"{abs(reduction):.1f} % {'less' if reduction >= 0 else 'more'}"
