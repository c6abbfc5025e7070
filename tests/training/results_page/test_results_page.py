"""The results page rendered from a synthetic study: every number on it comes from the
fixture, every planned row without a result says "not yet measured", and the generated
paragraphs follow the numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from training.__main__ import main
from training.results_page import render_page
from training.results_page.data import MISSING, load

EPS = 0.1


def _eval(
    stage,
    defence,
    threat,
    attack,
    robust,
    ci,
    n=500,
    steps=None,
    eps=EPS,
    clean=88.0,
    purpose="table",
    device="cpu",
):
    return {
        "stage": stage,
        "defence": defence,
        "threat_model": threat,
        "attack": attack,
        "eps": eps,
        "steps": steps,
        "n": n,
        "purpose": purpose,
        "clean_accuracy": clean,
        "clean_ci95": [85.1, 90.4],
        "robust_accuracy": robust,
        "robust_ci95": list(ci),
        "seconds": 12.5,
        "device": device,
    }


EVALUATION = [
    _eval("headline-none", "none", "white-box", "apgd-ce", 0.0, (0.0, 0.8)),
    _eval("extra-stage", "purifier", "end-to-end", "pgd", 12.3, (9.1, 16.2), steps=50),
    _eval("headline-e2e", "purifier", "end-to-end", "apgd-ce", 28.5, (25.8, 31.4), n=1000),
    _eval("headline-purifier", "purifier", "classifier-only", "apgd-ce", 58.5, (54.1, 62.8)),
    _eval("headline-purifier", "purifier", "bpda", "apgd-ce", 41.2, (36.9, 45.6)),
    _eval(
        "headline-square",
        "purifier",
        "end-to-end",
        "square",
        17.5,
        (12.9, 23.3),
        n=200,
        device="cuda: NVIDIA H200",
    ),
    {
        **_eval(
            "headline-adv-aa", "adv-training", "white-box", "autoattack", 57.0, (50.1, 63.7), n=200
        ),
        "fooled_by_stage": {
            "rect1/apgd-ce": 40,
            "rect1/apgd-t": 6,
            "rect1/square": 3,
            "ste/apgd-ce": 2,
        },
    },  # fmt: skip
    _eval("headline-adv", "adv-training", "white-box", "apgd-ce", 62.2, (57.9, 66.3), clean=81.2),
    _eval(
        "headline-purifier-adv",
        "purifier+adv",
        "end-to-end",
        "apgd-ce",
        51.6,
        (47.2, 56.0),
        clean=81.0,
    ),  # fmt: skip
    _eval("table1-k1", "none", "white-box", "pgd", 0.0, (0.0, 0.8), steps=20, eps=0.2),
    _eval("table1-k3", "none", "white-box", "pgd", 0.0, (0.0, 0.8), steps=20, eps=0.2),
    _eval("table2", "purifier", "classifier-only", "fgsm", 71.4, (67.3, 75.2)),
    _eval("table2", "purifier", "end-to-end", "fgsm", 44.2, (39.9, 48.6)),
    _eval("figure5-steps", "purifier", "end-to-end", "pgd", 40.6, (36.4, 45.0), steps=5),
    _eval("figure5-steps", "purifier", "end-to-end", "pgd", 33.8, (29.8, 38.0), steps=10),
    _eval("figure5-steps", "purifier", "end-to-end", "pgd", 31.0, (27.1, 35.2), steps=20),
    _eval(
        "headline-e2e",
        "purifier",
        "end-to-end",
        "pgd",
        0.4,
        (0.1, 1.5),
        steps=20,
        eps=0.5,
        purpose="sanity-large-eps",
    ),
]


def _stage(name, group, kind, state, progress, spent, left, device=""):
    return {
        "name": name,
        "group": group,
        "kind": kind,
        "state": state,
        "progress": progress,
        "spent_s": spent,
        "left_s": left,
        "device": device,
    }


def _detection_files(root: Path) -> None:
    stage = root / "eval" / "detect-purifier"
    setting = stage / "purifier" / "end-to-end" / "apgd-ce_eps0.10000_abc.json"
    setting.parent.mkdir(parents=True)
    block = {
        "auc_all": 0.61,
        "auc_all_ci95": [0.55, 0.67],
        "auc_fooled": 0.734,
        "auc_fooled_ci95": [0.688, 0.780],
        "threshold": 0.2,
        "fpr_calibration": {"k": 12, "n": 250, "percent": 4.8, "ci95": [2.8, 8.2]},
        "fpr_held_out": {"k": 14, "n": 250, "percent": 5.6, "ci95": [3.4, 9.2]},
        "tpr_all": {"k": 100, "n": 500, "percent": 20.0, "ci95": [16.7, 23.7]},
        "tpr_fooled": {"k": 90, "n": 300, "percent": 30.0, "ci95": [25.1, 35.4]},
        "fooled_and_passed": {"k": 210, "n": 500, "percent": 42.0, "ci95": [37.8, 46.3]},
    }
    result = {
        **_eval("detect-purifier", "purifier", "end-to-end", "apgd-ce", 40.0, (35.8, 44.4)),
        "purpose": "detection",
        "detection": {"mean": block, "q95": block},
        "clean_scores": {"mean": [0.1, 0.2, 0.3, 0.15], "q95": [0.2, 0.3, 0.4, 0.25]},
        "scores": {"mean": [0.3, 0.1, 0.5, 0.2], "q95": [0.4, 0.2, 0.6, 0.3]},
        "fooled": [0, 2],
    }
    setting.write_text(json.dumps(result))
    adaptive = {
        "threshold": 0.2,
        "clean_mean_noise_level": 0.1875,
        "fooled_and_passed": {"k": 301, "n": 500, "percent": 60.2, "ci95": [55.8, 64.4]},
        "by_lambda": [
            {"lambda": 0.0, "mean_noise_level": 0.2633},
            {"lambda": 100.0, "mean_noise_level": 0.1712},
        ],
    }
    # written as before the residual-aware attack (mean_noise_level), then as now
    residual = {
        "detector": "residual",
        "threshold": 0.05,
        "clean_mean_score": 0.0312,
        "fooled_and_passed": {"k": 155, "n": 500, "percent": 31.0, "ci95": [27.1, 35.2]},
        "by_lambda": [
            {"lambda": 0.0, "mean_score": 0.0871},
            {"lambda": 100.0, "mean_score": 0.0436},
        ],
    }
    rows = [
        {k: v for k, v in result.items() if k not in ("clean_scores", "scores", "fooled")},
        {**result, "attack": "pgd-noise-aware", "steps": 100, "adaptive": adaptive},
        {**result, "attack": "pgd-residual-aware", "steps": 100, "adaptive": residual},
    ]
    for row in rows:
        row.pop("clean_scores", None), row.pop("scores", None), row.pop("fooled", None)
    summary = {
        "config": {"defence": "purifier", "eps": EPS, "fpr": 0.05},
        "results": rows,
        "best_alternative": {
            "score": "q95",
            "label": "95th percentile of the noise map",
            "auc_fooled": 0.81,
            "mean_auc_fooled": 0.734,
        },
    }
    (stage / "detection.json").write_text(json.dumps(summary))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "studies" / "cpu-fashion-mnist"
    root.mkdir(parents=True)
    payload = {
        "preset": "cpu-fashion-mnist",
        "budget_hours": 20.0,
        "stages": [
            _stage("clf-k3", 1, "train", "done", "epoch 16 of 16", 7200.0, 0.0, "cpu"),
            _stage("purifier", 2, "train", "done", "epoch 5 of 5", 1800.0, 0.0, "cpu"),
            _stage("headline-e2e", 3, "evaluate", "done", "settings 2 of 2", 2600.0, 0.0, "cpu"),
            _stage("headline-adv", 4, "evaluate", "pending", "settings 0 of 2", 0.0, 900.0),
            _stage("figure5-eps", 7, "evaluate", "cut", "settings 0 of 15", 0.0, 9000.0),
        ],
        "cut_from_plan": [{"row": "purifier-adaptive", "reason": "over the 20 core-hour budget"}],
        "training": {
            "clf-k3": {
                "command": "train-classifier",
                "train_seconds": 7200.0,
                "best_score": 91.2,
                "final": {"val_acc": 91.2},
                "device": "cpu",
            },
            "purifier": {
                "command": "train-purifier",
                "train_seconds": 1800.0,
                "best_score": 80.0,
                "final": {},
                "device": "cpu",
            },
            "clf-k3-adv": {
                "command": "adv-train",
                "train_seconds": 14400.0,
                "best_score": 70.0,
                "final": {},
                "device": "cpu",
            },
        },
        "evaluation": EVALUATION,
    }
    (root / "results.json").write_text(json.dumps(payload))
    _detection_files(root)
    return root


@pytest.fixture
def page(study: Path, tmp_path: Path) -> tuple[str, Path]:
    out = tmp_path / "docs" / "results.md"
    return render_page(study, out, tmp_path / "docs" / "results"), out


def _line(text: str, *needles: str) -> str:
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles}"
    return lines[0]


def test_measured_rows_show_their_numbers_interval_and_n(page):
    text, _ = page
    row = _line(text, "purifier (shipped)", "end-to-end", "APGD-CE", "| 0.1 |")
    assert "28.5 % [25.8, 31.4]" in row and "| 1000 |" in row and "88.0 %" in row
    assert "58.5 % [54.1, 62.8]" in _line(text, "purifier (shipped)", "classifier-only", "APGD-CE")
    assert "cuda: NVIDIA H200" in _line(text, "Square", "17.5 %")
    # a stage no section knows still shows its rows
    assert "12.3 % [9.1, 16.2]" in text.split("## Other evaluations")[1]


def test_planned_rows_without_results_say_not_yet_measured(page):
    text, _ = page
    for needles in (("adversarial training", "bpda"), ("purifier (paper", "classifier-only")):
        row = _line(text, *needles)
        assert MISSING in row and "%" not in row.split("|")[6]
    # about a hundred planned rows; the fixture measures 16 (one of a stage the plan lacks)
    data_rows = sum(1 for line in text.splitlines() if line.startswith("|") and MISSING in line)
    assert data_rows > 50
    planned = int(re.search(r"16 of (\d+) planned evaluation rows are measured", text)[1])
    assert planned >= 100
    # the 15 rows of the ε sweep, a stage the budget cut, say so
    assert text.count(f"{MISSING} (stage cut)") == 15


def test_the_paper_numbers_stand_beside_the_rows_and_are_labelled(page):
    text, _ = page
    assert "SVHN 89.03 · CIFAR-10 71.03 · CIFAR-100 43.21" in text  # Table 4, APGD-CE
    assert "79.11" in text and "27.45" in text  # Table 1
    assert "78.85" in text  # Table 3
    assert "not on this study's fashion-mnist" in text


def test_paragraphs_follow_the_numbers(page):
    text, _ = page
    assert "overstates the end-to-end robustness: 58.5 % vs 28.5 % (+30.0 points" in text
    assert "do not overlap" in text
    assert "stronger than every white-box attack" in text and "masked gradients" in text
    assert "The strongest measured attack on purifier (shipped) is Square" in text
    assert "more steps never helped the defender" in text
    assert "APGD-CE 42, APGD-T 6, FAB-T 0, Square 3." in text  # summed over surrogates
    # equal robust accuracy at every K is no rise
    assert "PGD-20 at ε = 0.2: robust accuracy is the same for every K" in text
    assert (
        "in front of the adversarially trained classifier lowers its end-to-end robustness "
        "under APGD-CE: 51.6 % vs 62.2 % alone (-10.6 points; the intervals do not overlap), "
        "at 81.0 % vs 81.2 % clean."
    ) in text
    assert "fooled 3 that APGD-CE, APGD-T and FAB-T all missed (1.5 points)" in text
    assert "87.5 % less time" in text and "93.9" in text  # 1 - 1800 / 14400
    assert "37.5 % less" in text  # counting the classifier: 1 - (1800 + 7200) / 14400


def test_detection_stages_and_devices(page):
    text, _ = page
    assert "0.734 [0.688, 0.780]" in text
    assert "60.2 % [55.8, 64.4] of 500" in text and "42.0 % [37.8, 46.3] of 500" in text
    assert "λ = 100: 0.1712" in text
    assert "keeps the residual |purified - input| low" in text
    assert "31.0 % [27.1, 35.2] of 500" in text and "λ = 100: 0.0436" in text
    assert "adaptive PGD-100 (CE - λ·residual)" in text
    # the plan's classifier-only setting of the stage has no result file yet
    row = _line(text, "| classifier-only | APGD-CE | every score |")
    assert row.count(MISSING) == 5
    assert "95th percentile of the noise map" in text and "lead, not a result" in text
    assert "figure5-eps" in _line(text, "Cut because")
    assert "budget (20 core-hours)" in _line(text, "Cut because")
    assert "purifier-adaptive" in text and "over the 20 core-hour budget" in text
    assert "headline-adv" in _line(text, "Pending or partial")


def test_plots_are_written_and_linked(page):
    text, out = page
    pngs = sorted(p.name for p in (out.parent / "results").glob("*.png"))
    assert pngs == [
        "detection_detect-purifier.png",
        "headline.png",
        "sweep_steps.png",
        "training_time.png",
    ]
    for name in pngs:
        assert f"](results/{name})" in text
        assert (out.parent / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "*Plot: not yet measured.*" in text  # the ε sweep has no row


def test_a_sanity_failure_is_reported(study, tmp_path):
    payload = json.loads((study / "results.json").read_text())
    payload["evaluation"][-1].update(robust_accuracy=30.0, robust_ci95=[26.0, 34.3])
    (study / "results.json").write_text(json.dumps(payload))
    text = render_page(study, tmp_path / "r.md", tmp_path / "r")
    assert "FAILED" in _line(text, "stays above 5 %")


def test_an_unknown_preset_shows_the_measured_rows_only(study, tmp_path):
    payload = json.loads((study / "results.json").read_text())
    payload["preset"] = "no-such-preset"
    (study / "results.json").write_text(json.dumps(payload))
    data = load(study)
    assert len([r for r in data.rows if r.purpose == "table"]) == 16
    text = render_page(study, tmp_path / "r.md", tmp_path / "r")
    assert "could not be read" in text and "28.5 % [25.8, 31.4]" in text


def test_the_command_renders_and_refuses_a_directory_without_results(study, tmp_path, capsys):
    out = tmp_path / "page.md"
    assert main(["results-page", "--study", str(study), "--out", str(out)]) == 0
    assert "28.5 %" in out.read_text() and (tmp_path / "page" / "headline.png").exists()
    assert main(["results-page", "--study", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_the_served_model_section_shows_export_http_and_the_purifiers(study, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    manifest = {
        "name": "fashion-mnist", "version": "1.0",
        "metrics": {"eval_images": 10000, "clean_accuracy": 0.9167,
                    "purified_clean_accuracy": 0.9149},
        "models": {"classifier": {"source_checkpoint": "studies/x/clf-k3/best.safetensors"},
                   "purifier": {"source_checkpoint": "studies/x/purifier/best.safetensors"}},
    }  # fmt: skip
    (model / "manifest.json").write_text(json.dumps(manifest))
    served = tmp_path / "served.json"
    served.write_text(json.dumps({
        "model": "fashion-mnist v1.0", "n": 10000,
        "clean_accuracy": {"served": 91.66}, "purified_clean_accuracy": {"served": 91.5},
    }))  # fmt: skip
    epochs = [
        {"epoch": e, "val_clean_acc": 91.6, "val_purified_clean_acc": clean,
         "val_purified_acc": attacked, "val_purified_mean_acc": (clean + attacked) / 2}
        for e, clean, attacked in ((1, 91.3, 69.0), (2, 91.7, 74.3), (3, 92.3, 68.3))
    ]  # fmt: skip
    (study / "purifier").mkdir()
    (study / "purifier" / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    text = render_page(study, tmp_path / "r.md", tmp_path / "r", model, served)
    assert _line(text, "| bare |").strip(" |").split(" | ")[1:] == [
        "91.67 %",
        "10000",
        "91.66 %",
        "10000",
    ]
    assert "91.50 %" in _line(text, "| purified |")
    shipped = _line(text, "shipped (`purifier`)")
    assert "91.7 %" in shipped and "74.3 %" in shipped and "| 2 |" in shipped  # the best epoch
    assert "not yet measured" in _line(text, "(`purifier-paper`)")
    # a measurement of another version of the bundle is not shown as this one's
    served.write_text(served.read_text().replace("v1.0", "v0.9"))
    text = render_page(study, tmp_path / "r.md", tmp_path / "r", model, served)
    assert "not yet measured" in _line(text, "| bare |")


def test_a_time_saving_that_is_a_cost_says_more():
    from training.results_page.sections import _less_or_more

    assert _less_or_more(70.0) == "70.0 % less"
    assert _less_or_more(-61.4) == "61.4 % more"  # the purifier plus its classifier took longer


def test_a_lead_that_an_adaptive_attacker_defeats_is_called_so():
    """The best alternative score is a lead until an attacker who keeps it low is measured;
    then the page says what that attacker achieved."""
    from training.results_page.sections import _detection_sentences

    def row(adaptive=None):
        block = {"auc_fooled": 0.9, "auc_fooled_ci95": [0.85, 0.95]}
        out = {"threat_model": "end-to-end", "attack": "apgd-ce", "detection": {"mean": block}}
        if adaptive:
            out.update(attack="pgd-residual-aware", steps=100, adaptive=adaptive)
        return out

    rate = {"k": 154, "n": 200, "percent": 77.0, "ci95": [70.7, 82.3]}
    adaptive = {
        "detector": "residual", "clean_mean_score": 0.001, "fooled_and_passed": rate,
        "by_lambda": [{"lambda": 0.0, "mean_score": 0.03}],
    }  # fmt: skip
    best = {"score": "residual", "label": "mean |purified - input|", "auc_fooled": 0.998,
            "mean_auc_fooled": 0.74}  # fmt: skip
    lead = " ".join(_detection_sentences({"results": [row()], "best_alternative": best}))
    assert "treat it as a lead" in lead
    tested = " ".join(
        _detection_sentences({"results": [row(), row(adaptive)], "best_alternative": best})
    )
    assert "treat it as a lead" not in tested
    assert "undetected by it on 77.0 % [70.7, 82.3] of 200" in tested


def test_a_paper_figure_from_one_dataset_is_not_called_a_range():
    from training.results_page.data import Row
    from training.results_page.tables import _paper_vs_ours

    def row(robust):
        result = {"robust_accuracy": robust, "robust_ci95": [robust - 4, robust + 4], "n": 500}
        return Row("t2", "purifier", "classifier-only", "mifgsm", 0.1, 7, result=result)

    one = {"mifgsm": {"SVHN": None, "CIFAR-100": 37.52}}
    assert _paper_vs_ours([row(54.2)], one, "classifier-only") == [
        "MI-FGSM classifier-only: 54.2 % here, above the paper's 37.52 % (its only figure)."
    ]
    several = {"mifgsm": {"SVHN": 80.0, "CIFAR-100": 37.52}}
    (sentence,) = _paper_vs_ours([row(54.2)], several, "classifier-only")
    assert sentence.endswith("within the paper's range 37.52-80.00 % on its datasets.")


def test_a_step_sweep_says_whether_it_levelled_off():
    from training.results_page.data import Row
    from training.results_page.sections import _monotone_sentences

    def row(steps, robust, half=3.0):
        result = {
            "robust_accuracy": robust,
            "robust_ci95": [robust - half, robust + half],
            "n": 500,
        }
        return Row("f5", "purifier", "end-to-end", "pgd", 0.1, steps, result=result)

    falling = [row(5, 37.0), row(10, 26.8), row(20, 12.0), row(50, 6.4, half=2.0)]
    (sentence,) = _monotone_sentences({("purifier", "end-to-end"): falling}, "steps")
    assert "still falling at PGD-50 (12.0 % at PGD-20" in sentence
    flat = [row(5, 62.0), row(20, 57.8), row(50, 56.4)]
    (sentence,) = _monotone_sentences({("purifier", "classifier-only"): flat}, "steps")
    assert "levels off: PGD-20 and PGD-50 agree" in sentence
    (eps_sentence,) = _monotone_sentences({("purifier", "end-to-end"): falling}, "eps")
    assert "levels off" not in eps_sentence and "still falling" not in eps_sentence


def test_the_checks_each_evaluation_ran_are_summed_up_and_failures_named(study, tmp_path):
    stage = study / "eval" / "figure5-steps"
    stage.mkdir(parents=True, exist_ok=True)
    ok = {"check": "gradients", "passed": True, "detail": "fine"}
    bad = {"check": "monotone-steps", "passed": False, "detail": "purifier/end-to-end rises"}
    (stage / "sanity.json").write_text(json.dumps({"failed": 0, "checks": [ok]}))
    text = render_page(study, tmp_path / "r.md", tmp_path / "r")
    assert "(input gradients are finite and non-zero: 1): all pass." in text
    (stage / "sanity.json").write_text(json.dumps({"failed": 1, "checks": [ok, bad]}))
    text = render_page(study, tmp_path / "r.md", tmp_path / "r")
    assert "1 FAILED: figure5-steps: purifier/end-to-end rises." in text
