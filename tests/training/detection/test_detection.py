"""The noise-level detector: its statistics checked by hand, and the whole study run on the
shared tiny trained purifier + classifier (tests/conftest.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import main
from training.checkpoint import load_model
from training.detection import DetectionConfig, run_detection, stats, study_config
from training.detection.attacks import NoiseAwarePipeline, noise_penalised_loss

# --------------------------------------------------------------------------- statistics


def test_auc_matches_a_hand_count_with_ties():
    negatives = [0.1, 0.4, 0.35, 0.8]
    positives = [0.9, 0.4, 0.6]
    # 0.9 beats all 4; 0.4 beats 0.1 and 0.35 and ties 0.4; 0.6 beats 3: (4 + 2.5 + 3) / 12
    assert stats.roc_auc(negatives, positives) == pytest.approx(9.5 / 12)
    assert stats.roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert stats.roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert stats.roc_auc([1, 1], [1, 1, 1]) == 0.5


def _delong_by_pairs(neg, pos):
    """DeLong's variance from the pairwise kernel, written out as in the 1988 paper."""

    def psi(p, q):
        return 1.0 if p > q else 0.5 if p == q else 0.0

    v10 = np.array([np.mean([psi(p, q) for q in neg]) for p in pos])
    v01 = np.array([np.mean([psi(p, q) for p in pos]) for q in neg])
    return v10.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_interval_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    neg = np.round(rng.normal(0.0, 1.0, 40), 1)  # rounded: ties on purpose
    pos = np.round(rng.normal(0.8, 1.0, 30), 1)
    auc, var = _delong_by_pairs(neg, pos)
    got, lo, hi = stats.delong_interval(neg, pos)
    assert got == pytest.approx(auc)
    assert (hi - lo) / 2 == pytest.approx(stats.Z95 * np.sqrt(var), rel=1e-9)
    assert lo < auc < hi
    # perfectly separated sets: the interval is the point 1
    assert stats.delong_interval([0, 1], [2, 3]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("n", [20, 199, 200, 1000])
def test_threshold_keeps_the_false_positive_rate_and_is_the_tightest(n):
    rng = np.random.default_rng(n)
    clean = np.round(rng.gamma(2.0, 0.05, n), 3)  # ties
    t = stats.threshold_at_fpr(clean, 0.05)
    assert stats.flagged(clean, t).mean() <= 0.05
    lower = clean[clean < t]
    if len(lower):  # the next observed value down flags too many
        assert stats.flagged(clean, lower.max()).mean() > 0.05 or lower.max() == t


def test_content_calibration_removes_what_content_explains():
    rng = np.random.default_rng(1)
    n = 400
    intensity, gradient = rng.uniform(0.1, 0.6, n), rng.uniform(0.0, 0.2, n)
    clean = {
        "mean": 0.05 + 0.5 * intensity + 0.3 * gradient + rng.normal(0, 0.005, n),
        "feature:intensity": intensity,
        "feature:gradient": gradient,
    }
    folds = stats.folds_of(n)
    calibrated = stats.calibrated_scores(clean, clean, folds)
    assert calibrated.std() < 0.01 < clean["mean"].std() / 5  # 0.005 left of 0.07
    shifted = {**clean, "mean": clean["mean"] + 0.03}  # the same content, more noise
    assert stats.calibrated_scores(clean, shifted, folds).mean() == pytest.approx(0.03, abs=3e-3)


# --------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(tiny_build: Path, out: Path, **changes) -> DetectionConfig:
    settings = dict(
        classifier=str(tiny_build / "classifier.safetensors"),
        purifier=str(tiny_build / "purifier.safetensors"),
        out=str(out), attack="pgd", steps=5, adaptive_steps=10, lambdas=(0.0, 200.0),
        surrogates=("rect1",), n=24, batch_size=24,
    )  # fmt: skip
    return DetectionConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def study(tiny_build, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("detection")
    written = []
    summary = run_detection(
        _config(tiny_build, out), log=lambda _: None, on_result=lambda p, _: written.append(p)
    )
    return out, summary, written


def test_the_purifier_fires_and_its_noise_map_depends_on_the_input(tiny_build):
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    x = torch.rand(6, 1, 28, 28)
    scores = stats.image_scores(purifier, x)
    assert np.ptp(scores["mean"]) > 1e-4 and np.ptp(scores["q95"]) > 1e-4
    assert scores["residual"].min() > 0  # the purifier changes its input


def test_every_setting_writes_one_result_file(study):
    out, summary, written = study
    assert len(written) == 4  # two threat models, two adaptive attackers
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert "detection.json" in files
    assert {f.split("/")[1] for f in files if "/" in f} == {"classifier-only", "end-to-end"}
    for path in written:
        r = json.loads(path.read_text())
        assert r["purpose"] == "detection" and r["n"] == 24 and r["defence"] == "purifier"
        for key in ("clean_accuracy", "clean_ci95", "robust_accuracy", "robust_ci95", "seconds"):
            assert key in r
        assert r["robust_accuracy"] <= r["clean_accuracy"]
        assert len(r["scores"]["mean"]) == len(r["clean_scores"]["mean"]) == 24
        assert set(r["detection"]) == set(stats.SCORES)


def test_the_threshold_keeps_five_percent_fpr_on_its_clean_images(study):
    out, summary, _ = study
    for row in summary["results"]:
        for name, entry in row["detection"].items():
            assert entry["fpr_calibration"]["percent"] <= 5.0, name
            assert entry["threshold"] == summary["thresholds"][name]
    # recomputed from the per-image scores in a result file
    r = json.loads((out / summary["results"][0]["file"]).read_text())
    clean = np.array(r["clean_scores"]["mean"])[0::2]
    t = summary["thresholds"]["mean"]
    assert (clean > t).mean() <= 0.05
    assert t == stats.threshold_at_fpr(clean, 0.05)  # the file holds the exact scores


def test_reported_auc_is_the_auc_of_the_stored_scores(study):
    out, summary, _ = study
    row = next(r for r in summary["results"] if r["attack"] == "pgd")
    r = json.loads((out / row["file"]).read_text())
    clean, attacked = np.array(r["clean_scores"]["mean"]), np.array(r["scores"]["mean"])
    assert row["detection"]["mean"]["auc_all"] == pytest.approx(
        stats.roc_auc(clean, attacked), abs=1e-3
    )
    fooled = np.array(r["fooled"], dtype=int)
    if len(fooled):
        assert row["detection"]["mean"]["auc_fooled"] == pytest.approx(
            stats.roc_auc(clean, attacked[fooled]), abs=1e-3
        )


@pytest.mark.parametrize(
    ("attack", "score"), [("pgd-noise-aware", "mean"), ("pgd-residual-aware", "residual")]
)
def test_the_adaptive_attack_lowers_its_score(study, attack, score):
    """Each adaptive attacker lowers the score it is penalised by, and counts an example as
    passing by that score's own threshold."""
    _, summary, _ = study
    row = next(r for r in summary["results"] if r["attack"] == attack)
    adaptive = row["adaptive"]
    assert adaptive["detector"] == score
    assert adaptive["threshold"] == summary["thresholds"][score]
    plain, penalised = adaptive["by_lambda"][0], adaptive["by_lambda"][-1]
    assert plain["lambda"] == 0.0 and penalised["lambda"] == 200.0
    assert penalised["mean_score"] < plain["mean_score"] - 1e-3
    # the plain PGD of the same budget is an attack: it raises the loss, not the noise
    assert adaptive["fooled_and_passed"]["k"] <= adaptive["fooled_any"]["k"]
    assert adaptive["defended_accuracy"]["percent"] >= row["robust_accuracy"] - 1e-9


@pytest.mark.parametrize("score", ["mean", "residual"])
def test_noise_penalised_loss_differentiates_the_score(tiny_build, score):
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    pipeline = NoiseAwarePipeline(purifier, classifier)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long)
    grads = []
    for lam in (0.0, 50.0):
        loss = noise_penalised_loss(pipeline, lam, score)(pipeline(x), y).sum()
        (g,) = torch.autograd.grad(loss, x)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])


def test_a_second_run_reuses_the_files_and_force_recomputes(study, tiny_build):
    out, summary, _ = study
    rerun = []
    again = run_detection(
        _config(tiny_build, out, adaptive=False), log=lambda _: None,
        on_result=lambda p, _: rerun.append(p),
    )  # fmt: skip
    assert rerun == []
    assert [r["key"] for r in again["results"]] == [r["key"] for r in summary["results"][:2]]
    forced = []
    run_detection(
        _config(tiny_build, out, adaptive=False, threat_models=("end-to-end",), force=True),
        log=lambda _: None, on_result=lambda p, _: forced.append(p),
    )  # fmt: skip
    assert len(forced) == 1


def _argv(classifier: Path, purifier: Path, out: Path) -> list[str]:
    return [
        "detect",
        "--classifier",
        str(classifier),
        "--purifier",
        str(purifier),
        "--out",
        str(out),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "nope"], "unknown attack"),
        (["--threat-models", "transfer"], "threat models"),
        (["--fpr", "1.5"], "--fpr"),
        (["-n", "2"], "-n must be"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tiny_build, tmp_path, capsys, extra, message):
    argv = _argv(
        tiny_build / "classifier.safetensors", tiny_build / "purifier.safetensors", tmp_path
    )
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_classifier_in_place_of_the_purifier_is_refused(tiny_build, tmp_path, capsys):
    clf = tiny_build / "classifier.safetensors"
    assert main(_argv(clf, clf, tmp_path)) == 2
    assert "not a purifier" in capsys.readouterr().err


def test_auc_is_the_share_of_ordered_pairs_on_small_sets():
    for neg, pos in itertools.product([[0.2, 0.5], [0.1, 0.1, 0.9]], [[0.5, 0.7], [0.1]]):
        pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg]
        assert stats.roc_auc(neg, pos) == pytest.approx(np.mean(pairs))


def test_study_config_points_at_the_study_directories(tmp_path):
    config = study_config(tmp_path, "detection", n=100, eps=0.05)
    assert config.classifier == str(tmp_path / "clf-k3")
    assert config.purifier == str(tmp_path / "purifier")
    assert config.out == str(tmp_path / "eval" / "detection")
    assert (config.defence, config.n, config.eps) == ("purifier", 100, 0.05)


def test_more_surrogate_shapes_only_add_fooled_images(tiny_build, one_thread):
    from training.data import load_split
    from training.detection.attacks import worst_case
    from training.threat_models import Defence

    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    defence = Defence("purifier", classifier, purifier)
    split = load_split("fashion-mnist", train=False).subset(32, seed=1)
    x, y = split.float_images(), split.labels
    runs = [
        worst_case(defence, "end-to-end", "pgd", x, y, eps=0.1, steps=5, surrogates=shapes)
        for shapes in (("rect1",), ("rect1", "sigmoid4", "ste"))
    ]
    one, three = (r.fooled for r in runs)
    assert bool((one <= three).all())  # the first shape's fooled images stay fooled
    assert (runs[1].images - x).abs().amax() <= 0.1 + 1e-6
    with torch.no_grad():
        wrong = defence.pipeline(runs[1].images).argmax(1) != y
    assert bool((wrong[three]).all())  # the kept example of a fooled image fools


class Interrupted(Exception):
    """Stands in for a machine that goes away."""


def test_an_interrupted_run_keeps_a_summary_and_continues(tiny_build, tmp_path, one_thread):
    config = _config(tiny_build, tmp_path, adaptive=False)

    def stop(path, result):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_detection(config, log=lambda _: None, on_result=stop)
    summary = json.loads((tmp_path / "detection.json").read_text())
    assert [r["threat_model"] for r in summary["results"]] == ["classifier-only"]
    ran = []
    summary = run_detection(config, log=lambda _: None, on_result=lambda p, _: ran.append(p))
    assert [p.parent.name for p in ran] == ["end-to-end"]
    assert len(summary["results"]) == 2
