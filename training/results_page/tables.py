"""The evaluation tables of the results page, each beside the paper's figures for the same
rows, each followed by a paragraph generated from the numbers in it."""

from __future__ import annotations

from collections import defaultdict

from . import paper
from .data import MISSING, Row, StudyData, eps_key, per_source
from .text import (
    WHITE_BOX_THREATS,
    attack_label,
    cell,
    clean_cell,
    defence_label,
    describe,
    device_cell,
    n_cell,
    not_measured_note,
    overlap_verdict,
    pct,
    sort_key,
    table,
)

HEADLINE_ATTACKS = ("apgd-ce", "apgd-t", "autoattack", "square")
TABLE2_ATTACKS = ("gaussian", "fgsm", "ifgsm", "mifgsm", "pgd", "cw", "bpda-eot")


def _long_table(rows: list[Row]) -> list[str]:
    body = [
        (
            defence_label(r.defence),
            r.threat_model,
            attack_label(r.attack, r.steps),
            f"{r.eps:.4g}" if r.eps is not None else "-",
            clean_cell(r),
            cell(r),
            n_cell(r),
            device_cell(r),
        )
        for r in sorted(rows, key=sort_key)
    ]
    header = ("defence", "threat model", "attack", "ε", "clean", "robust [95 % CI]", "N", "device")
    return table(header, body)


def _gap_sentences(rows: list[Row]) -> list[str]:
    """Per (defence, attack): the gap between classifier-only and end-to-end."""
    by = {(r.defence, r.attack, r.steps, r.threat_model): r for r in rows if r.measured}
    out = []
    for (defence, attack, steps, threat), co in sorted(by.items(), key=lambda kv: str(kv[0])):
        e2e = by.get((defence, attack, steps, "end-to-end"))
        if threat != "classifier-only" or e2e is None:
            continue
        gap = co.robust - e2e.robust
        verdict = overlap_verdict(co, e2e)
        direction = "overstates" if gap > 0 else "does not overstate"
        out.append(
            f"For {defence_label(defence)} under {attack_label(attack, steps)}, the "
            f"classifier-only protocol {direction} the end-to-end robustness: {co.robust:.1f} % vs "
            f"{e2e.robust:.1f} % ({gap:+.1f} points; {verdict})."
        )
    return out


def _strongest_sentences(rows: list[Row]) -> list[str]:
    by_defence: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.measured:
            by_defence[r.defence].append(r)
    out = []
    for defence, measured in sorted(by_defence.items(), key=lambda kv: sort_key(kv[1][0])):
        worst = min(measured, key=lambda r: r.robust)
        out.append(
            f"The strongest measured attack on {defence_label(defence)} is {describe(worst)}"
            + (f", of {len(measured)} measured rows." if len(measured) > 1 else ".")
        )
    return out


def _square_sentence(rows: list[Row]) -> list[str]:
    out = []
    for square in (r for r in rows if r.attack == "square" and r.measured):
        white = [
            r
            for r in rows
            if r.defence == square.defence
            and r.measured
            and r.attack != "square"
            and r.threat_model in WHITE_BOX_THREATS
        ]
        if not white:
            out.append(
                f"Square on {defence_label(square.defence)}: {cell(square)}; no white-box "
                "row of the same defence is measured yet to compare with."
            )
            continue
        best = min(white, key=lambda r: r.robust)
        if square.robust < best.robust:
            out.append(
                f"The black-box Square attack ({cell(square)}) is stronger than every white-box "
                f"attack measured on {defence_label(square.defence)} (best {describe(best)}): a "
                "sign of masked gradients; the white-box figures overstate its robustness."
            )
        else:
            out.append(
                f"The black-box Square attack ({cell(square)}) stays above the strongest "
                f"white-box attack on {defence_label(square.defence)} ({describe(best)}): this "
                "check shows no sign of masked gradients."
            )
    return out


CASCADE = (("apgd-ce", "APGD-CE"), ("apgd-t", "APGD-T"), ("fab-t", "FAB-T"), ("square", "Square"))


def _cascade_sentence(rows: list[Row]) -> list[str]:
    """What each AutoAttack component fooled (summed over the surrogate gradients), and
    whether the black-box Square found images the three white-box attacks missed."""
    out = []
    for r in rows:
        stages = (r.result or {}).get("fooled_by_stage") if r.measured else None
        if r.attack != "autoattack" or not stages:
            continue
        fooled = {name: 0 for name, _ in CASCADE}
        for key, count in stages.items():
            fooled[key.rsplit("/", 1)[-1]] = fooled.get(key.rsplit("/", 1)[-1], 0) + count
        listing = ", ".join(f"{label} {fooled[name]}" for name, label in CASCADE)
        sentence = (
            f"AutoAttack on {defence_label(r.defence)} ({r.result.get('n')} images): "
            f"images fooled by each attack of the cascade, in order, {listing}."
        )
        if fooled["square"]:
            share = 100.0 * fooled["square"] / max(int(r.result.get("n") or 1), 1)
            sentence += (
                f" Square, a black-box attack, fooled {fooled['square']} that APGD-CE, APGD-T "
                f"and FAB-T all missed ({share:.1f} points): a sign of partly masked gradients, "
                "so white-box rows of this defence without Square overstate it."
            )
        else:
            sentence += " Square fooled none the white-box attacks missed."
        out.append(sentence)
    return out


def _combination_sentence(rows: list[Row], attack: str = "apgd-ce") -> list[str]:
    """The paper says the purifier combines with other defences: the purifier in front of
    the adversarially trained classifier against that classifier alone, end to end."""
    end = {
        r.defence: r
        for r in rows
        if r.measured and r.attack == attack and r.threat_model in ("end-to-end", "white-box")
    }
    both, alone = end.get("purifier+adv"), end.get("adv-training")
    if both is None or alone is None:
        return []
    change = both.robust - alone.robust
    verdict = overlap_verdict(both, alone)
    effect = "raises" if change > 0 else "lowers" if change < 0 else "leaves"
    return [
        f"Putting the purifier in front of the adversarially trained classifier {effect} its "
        f"end-to-end robustness under {attack_label(attack)}: {both.robust:.1f} % vs "
        f"{alone.robust:.1f} % alone ({change:+.1f} points; {verdict}), at "
        f"{both.result['clean_accuracy']:.1f} % vs {alone.result['clean_accuracy']:.1f} % clean."
    ]


def _compare_defences(rows: list[Row], attack: str = "apgd-ce") -> list[str]:
    end = {
        r.defence: r
        for r in rows
        if r.measured and r.attack == attack and r.threat_model in ("end-to-end", "white-box")
    }
    if len(end) < 2:
        return []
    ranked = sorted(end.values(), key=lambda r: -r.robust)
    listing = "; ".join(f"{defence_label(r.defence)} {cell(r)}" for r in ranked)
    return [
        f"Against {attack_label(attack)} with the attacker holding the whole pipeline "
        f"(end-to-end, or white-box without a purifier), the defences rank: {listing}."
    ]


def headline(data: StudyData) -> list[str]:
    rows = data.select("headline")
    eps = f"ε = {data.eval_eps:g}" if data.eval_eps is not None else "the study's ε"
    lines = [f"## Headline evaluation ({data.dataset or 'this study'}, {eps})", ""]
    lines += _long_table(rows) + ["", not_measured_note(rows), ""]
    lines += [
        "**The paper's figures for the same rows** (Table 4, the purifier; "
        f"{', '.join(paper.DATASETS)} at {paper.EPS_TEXT}, under the paper's protocol, "
        "which attacks the classifier and purifies afterwards; "
        f"not {data.dataset or 'this dataset'}):",
        "",
    ]
    body = []
    for attack, figures in paper.TABLE4.items():
        ours = [
            r
            for r in data.rows
            if r.attack == attack and r.defence == "purifier" and r.purpose == "table"
        ]
        mine = "; ".join(f"{r.threat_model} {cell(r)}" for r in sorted(ours, key=sort_key))
        body.append((attack_label(attack), paper.figures(figures), mine or "not in the plan"))
    lines += table(("attack", "paper (purifier)", "this study, purifier (shipped)"), body)
    sentences = _strongest_sentences(rows) + _gap_sentences(rows) + _square_sentence(rows)
    sentences += _cascade_sentence(rows) + _combination_sentence(rows)
    sentences += _compare_defences(rows)
    lines += ["", " ".join(sentences) if sentences else "No headline row is measured yet.", ""]
    return lines


def table2(data: StudyData) -> list[str]:
    rows = data.select("table2")
    grid = {(r.defence, r.threat_model, r.attack): r for r in rows}
    keys = sorted(
        {(r.defence, r.threat_model) for r in rows},
        key=lambda k: sort_key(Row("", k[0], k[1], "", None, None)),
    )
    lines = ["## The paper's Table 2 attacks", ""]
    header = ["defence", "threat model", *(attack_label(a) for a in TABLE2_ATTACKS)]
    body = []
    for defence, threat in keys:
        cells = []
        for attack in TABLE2_ATTACKS:
            row = grid.get((defence, threat, attack))
            if row is None and attack == "gaussian":
                row = grid.get((defence, "noise", attack))
            cells.append(cell(row) if row is not None else "-")
        body.append((defence_label(defence), threat, *cells))
    lines += table(header, body) if body else ["No Table 2 row is in the study's plan."]
    lines += [
        "",
        "Gaussian noise is σ = 20/255 and not bounded by ε (filed as threat model "
        "`noise`); '-' marks a combination the plan does not run. " + not_measured_note(rows),
        "",
    ]
    lines += [
        f"**The paper's Table 2** (the purifier, {paper.EPS_TEXT}; I-FGSM, MI-FGSM and PGD "
        "7 steps of 2/255, CW 50 steps; its protocol attacks the classifier alone):",
        "",
    ]
    paper_body = [
        (d, *(_paper_value(paper.TABLE2.get(a, {}), d) for a in TABLE2_ATTACKS))
        for d in paper.DATASETS
    ]
    lines += table(["dataset", *(attack_label(a) for a in TABLE2_ATTACKS)], paper_body)
    sentences = _strongest_sentences(rows) + _gap_sentences(rows)
    sentences += _paper_vs_ours(rows, paper.TABLE2, "classifier-only")
    lines += ["", " ".join(sentences) if sentences else "No Table 2 row is measured yet.", ""]
    return lines


def _paper_value(figures: dict[str, float], dataset: str) -> str:
    value = figures.get(dataset)
    return f"{value:.2f}" if value is not None else "not given"


def _paper_vs_ours(rows: list[Row], figures: dict, threat: str) -> list[str]:
    out = []
    for r in sorted((r for r in rows if r.measured and r.defence == "purifier"), key=sort_key):
        given = [v for v in figures.get(r.attack, {}).values() if v is not None]
        if r.threat_model != threat or not given:
            continue
        lo, hi = min(given), max(given)
        inside = "equal to" if lo == hi else "within"  # one dataset, or a range over several
        where = "below" if r.robust < lo else "above" if r.robust > hi else inside
        paper_figures = (
            f"the paper's {lo:.2f} % (its only figure)"
            if lo == hi
            else f"the paper's range {lo:.2f}-{hi:.2f} % on its datasets"
        )
        out.append(
            f"{attack_label(r.attack)} {threat}: {r.robust:.1f} % here, {where} {paper_figures}."
        )
    return out


def table1(data: StudyData) -> list[str]:
    rows = [r for r in data.select("table1-k")]
    lines = ["## MLF ablation (the paper's Table 1)", ""]
    columns = sorted(
        {(r.attack, eps_key(r.eps), r.steps) for r in rows}, key=lambda c: (c[0], c[1] or 0)
    )
    grid = {(r.stage, r.attack, eps_key(r.eps), r.steps): r for r in rows}
    ks = sorted({r.stage for r in rows})
    header = ["K", *(f"{attack_label(a, s)} ε = {e:g}" for a, e, s in columns)]
    header += [f"paper FGSM ε = {paper.TABLE1_EPS:g}", f"paper PGD ε = {paper.TABLE1_EPS:g}"]
    body = []
    for stage in ks:
        k = int(stage.rsplit("k", 1)[1])
        cells = [cell(grid.get((stage, a, e, s))) for a, e, s in columns]
        body.append(
            (k, *cells, f"{paper.TABLE1[('fgsm', k)]:.2f}", f"{paper.TABLE1[('pgd', k)]:.2f}")
        )
    lines += table(header, body) if body else ["No ablation row is in the study's plan."]
    lines += [
        "",
        f"The paper's figures: {paper.TABLE1_DATASET}; this study: "
        f"{data.dataset or 'its dataset'}, SENet18-SNN, no purifier. " + not_measured_note(rows),
        "",
    ]
    sentences = []
    for a, e, s in columns:
        measured = [(int(st.rsplit("k", 1)[1]), grid.get((st, a, e, s))) for st in ks]
        measured = [(k, r) for k, r in measured if r is not None and r.measured]
        if len(measured) < 2:
            continue
        values = [r.robust for _, r in measured]
        rising = all(b >= a_ for a_, b in zip(values, values[1:], strict=False))
        k_lo, k_hi = measured[0], measured[-1]
        if len(set(values)) == 1:
            claim = "is the same for every K, so the paper's rise is not seen"
        elif rising:
            claim = f"rises with K, as the paper reports ({overlap_verdict(k_lo[1], k_hi[1])})"
        else:
            claim = "does not rise with K"
        sentences.append(
            f"{attack_label(a, s)} at ε = {e:g}: robust accuracy {claim} "
            f"(K = {k_lo[0]} {k_lo[1].robust:.1f} %, K = {k_hi[0]} "
            f"{k_hi[1].robust:.1f} %)."
        )
    lines += [" ".join(sentences) if sentences else "No two K of one column are measured yet.", ""]
    return lines


def table3(data: StudyData) -> list[str]:
    rows = data.select("table3")
    sources = per_source(data, "table3")
    lines = ["## Transfer attacks (the paper's Table 3)", ""]
    body = []
    for r in sorted(rows, key=sort_key):
        by_source = sources.get((r.defence, r.attack, eps_key(r.eps), r.steps), {})
        detail = "; ".join(f"{name} {v['robust_accuracy']:.1f} %" for name, v in by_source.items())
        body.append(
            (
                defence_label(r.defence),
                attack_label(r.attack, r.steps),
                cell(r),
                detail or (MISSING if not r.measured else "-"),
                n_cell(r),
                device_cell(r),
            )
        )
    header = ("defence", "attack", "robust, worst source [95 % CI]", "by source", "N", "device")
    lines += table(header, body) if body else ["No transfer row is in the study's plan."]
    lines += [
        "",
        not_measured_note(rows),
        "",
        f"**The paper's Table 3** (the purifier; {paper.TABLE3_DATASET}):",
        "",
    ]
    paper_body = []
    for arch, label in paper.TABLE3_SOURCES.items():
        cells = [
            f"{paper.TABLE3[(arch, a, s)]:.2f}"
            for a, s in (("fgsm", None), ("pgd", 5), ("pgd", 10), ("pgd", 20))
        ]
        paper_body.append((label, *cells))
    lines += table(("source", "FGSM", "PGD-5", "PGD-10", "PGD-20"), paper_body)
    lines += [
        "",
        " ".join(_transfer_sentences(data, rows)) or "No transfer row is measured yet.",
        "",
    ]
    return lines


def _transfer_sentences(data: StudyData, rows: list[Row]) -> list[str]:
    out = []
    white = [
        r
        for r in data.rows
        if r.measured and r.purpose == "table" and r.threat_model in WHITE_BOX_THREATS
    ]
    for r in (r for r in rows if r.measured):
        same = [
            w
            for w in white
            if w.defence == r.defence
            and w.attack == r.attack
            and eps_key(w.eps) == eps_key(r.eps)
            and (w.steps or 0) >= (r.steps or 0)
        ]
        if not same:
            continue
        best = min(same, key=lambda w: w.robust)
        verdict = (
            "is stronger than the white-box attack: white-box figures are not to be trusted here"
            if r.robust < best.robust
            else "is weaker than white-box, as it should be"
        )
        out.append(
            f"{defence_label(r.defence)}, {attack_label(r.attack, r.steps)}: transfer "
            f"{pct(r.robust)} {verdict} ({describe(best)})."
        )
    return out


def reuse(data: StudyData) -> list[str]:
    rows = data.select("purifier-on-resnet20")
    lines = ["## The purifier reused in front of another classifier", ""]
    lines += _long_table(rows) + ["", not_measured_note(rows)]
    same = {
        (r.threat_model, r.attack, r.steps, eps_key(r.eps)): r
        for r in data.rows
        if r.defence == "purifier" and r.measured and r.purpose == "table"
    }
    sentences = []
    for r in (r for r in rows if r.measured):
        ref = same.get((r.threat_model, r.attack, r.steps, eps_key(r.eps)))
        if ref is not None:
            sentences.append(
                f"{r.threat_model} {attack_label(r.attack, r.steps)}: {pct(r.robust)} "
                f"in front of ResNet20-SNN vs {pct(ref.robust)} in front of the "
                f"SENet18-SNN it was trained with ({r.robust - ref.robust:+.1f} points)."
            )
    lines += [
        "",
        "The paper gives no figures for this row; it says the accuracy is similar to "
        "its Table 2. " + (" ".join(sentences) or "No pair of rows to compare is measured yet."),
        "",
    ]
    return lines


SECTION_PREFIXES = ("headline", "table2", "table1-k", "table3", "purifier-on-resnet20", "figure5-")


def others(data: StudyData) -> list[str]:
    """Rows of stages no section above claims (a stage added to the plan later), so that
    every planned or measured row appears somewhere."""
    rows = [
        r for r in data.rows if r.purpose == "table" and not r.stage.startswith(SECTION_PREFIXES)
    ]
    if not rows:
        return []
    lines = ["## Other evaluations", ""]
    for stage in sorted({r.stage for r in rows}):
        stage_rows = [r for r in rows if r.stage == stage]
        lines += [f"**{stage}**", ""] + _long_table(stage_rows)
        lines += ["", not_measured_note(stage_rows), ""]
        sentences = _strongest_sentences(stage_rows) + _gap_sentences(stage_rows)
        lines += [" ".join(sentences) or "No row of this stage is measured yet.", ""]
    return lines
