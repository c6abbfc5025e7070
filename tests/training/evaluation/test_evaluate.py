"""The evaluation harness end to end: checkpoints of tiny trained spiking models, a
generated IDX dataset, ``python -m training evaluate`` and its report files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_snn import calibrate, make_blobs

from training.__main__ import main
from training.attacks import Budget
from training.checkpoint import save_checkpoint
from training.evaluation import SuiteConfig, evaluate, run_suite
from training.evaluation.cli import configure
from training.evaluation.report import sanity_checks, wilson_interval
from training.losses import charbonnier
from training.models import create_model
from training.threat_models import Defence

N = 16


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# whole evaluations of the tiny models: each module fixture takes tens of seconds
pytestmark = [pytest.mark.usefixtures("registered_tiny_snn"), pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_snn, tiny_snn_source) -> Path:
    """Checkpoints (classifier, transfer source, purifier) and an IDX test split."""
    root = tmp_path_factory.mktemp("evaluate")
    images, labels = make_blobs(200, seed=7)
    data = root / "data"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte", (images[:, 0] * 255).round().numpy())
    write_idx(data / "t10k-labels-idx1-ubyte", labels.numpy())
    meta = {"dataset": "mnist"}
    save_checkpoint(root / "classifier" / "best.safetensors", tiny_snn, meta)
    save_checkpoint(root / "source" / "best.safetensors", tiny_snn_source, meta)

    torch.manual_seed(0)
    purifier = create_model("purifier", width=4, in_channels=1, timesteps=2)
    train_images, _ = make_blobs(128, seed=3)
    calibrate(purifier, train_images)
    opt = torch.optim.Adam(purifier.parameters(), lr=3e-3)
    purifier.train()
    for step in range(6):
        x = train_images[step * 16 : step * 16 + 32]
        noisy = (x + 0.1 * torch.randn(x.shape)).clamp(0, 1)
        loss = charbonnier(purifier(noisy)[0], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    calibrate(purifier, train_images)
    save_checkpoint(root / "purifier" / "best.safetensors", purifier.eval(), meta)
    return root


def cli(workspace: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--classifier", str(workspace / "classifier"),
        "--purifier", str(workspace / "purifier"), "--source", str(workspace / "source"),
        "--data-dir", str(workspace / "data"), "-n", str(N), "--batch-size", "16",
        "--out", str(out), "--surrogate-gradients", "rect1", *extra,
    ]  # fmt: skip


SUITE = ("--attacks", "gaussian", "fgsm", "pgd", "--eps", "0.1", "0.2", "--steps", "1", "3",
         "--alpha", "auto")  # fmt: skip


@pytest.fixture(scope="module")
def suite(workspace: Path, capsys_module) -> tuple[Path, int, str]:
    out = workspace / "results"
    code = main(cli(workspace, out, *SUITE))
    return out, code, capsys_module()


@pytest.fixture(scope="module")
def capsys_module():
    """Module-scoped stdout capture (pytest's capsys is function-scoped)."""
    import contextlib
    import io

    buffers: list[io.StringIO] = []

    def read() -> str:
        return buffers.pop().getvalue() if buffers else ""

    stack = contextlib.ExitStack()
    buffer = io.StringIO()
    buffers.append(buffer)
    stack.enter_context(contextlib.redirect_stdout(buffer))
    yield read
    stack.close()


def result_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if p.name not in ("sanity.json", "summary.json"))


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 2), round(hi, 2)) == (23.66, 76.34)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and round(hi, 2) == 27.75
    assert wilson_interval(0, 0) == (0.0, 100.0)


def test_result_files_have_the_documented_fields(suite):
    out, _, _ = suite
    files = result_files(out)
    threats = {json.loads(p.read_text())["threat_model"] for p in files}
    assert threats == {"white-box", "classifier-only", "end-to-end", "bpda", "transfer", "noise"}
    for path in files:
        r = json.loads(path.read_text())
        for key in ("defence", "threat_model", "attack", "eps", "steps", "n", "seconds",
                    "clean_accuracy", "clean_ci95", "robust_accuracy", "robust_ci95",
                    "settings", "key", "fooled_by"):  # fmt: skip
            assert key in r, (path, key)
        assert r["n"] == N
        assert r["robust_correct"] <= r["clean_correct"]
        for field in ("clean", "robust"):
            lo, hi = r[f"{field}_ci95"]
            assert lo <= r[f"{field}_accuracy"] <= hi
        assert r["settings"]["attack"]["attack"] == r["attack"]
        if r["attack"] == "pgd" and r["purpose"] == "table":
            assert r["settings"]["attack"]["steps"] == r["steps"] in (1, 3)
            assert r["settings"]["attack"]["eps"] == r["eps"] in (0.1, 0.2)
            early = r["threat_model"] in ("white-box", "end-to-end", "bpda")
            assert r["settings"]["attack"]["stop_when_fooled"] == early
        if r["threat_model"] == "transfer":
            assert set(r["per_source"]) == {"source"}
    clean: dict[str, set] = {}
    for path in files:
        r = json.loads(path.read_text())
        clean.setdefault(r["defence"], set()).add(r["clean_accuracy"])
    assert set(clean) == {"none", "purifier"}
    assert all(len(values) == 1 and min(values) > 50 for values in clean.values())


def test_attacks_lower_accuracy_of_the_undefended_model(suite):
    out, _, _ = suite
    rows = [json.loads(p.read_text()) for p in (out / "none" / "white-box").glob("pgd_steps3*")]
    assert sorted(r["eps"] for r in rows) == [0.1, 0.2]
    for r in rows:
        if r["eps"] == 0.2:
            assert r["robust_accuracy"] < r["clean_accuracy"] - 20


def test_summary_plots_and_sanity_report(suite):
    out, code, log = suite
    summary = (out / "summary.md").read_text()
    for threat in ("classifier-only", "end-to-end", "bpda", "transfer"):
        assert f"## Threat model: {threat}, eps = 0.1 " in summary
    assert "| Defence | Clean | Gaussian | FGSM | PGD^1 | PGD^3 |" in summary
    assert "| purifier |" in summary and "| none (white-box) |" in summary
    assert "Transfer attacks by source model" in summary
    for name in ("pgd_vs_eps_end-to-end.png", "pgd_vs_steps_end-to-end.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    sanity = json.loads((out / "sanity.json").read_text())
    assert sanity["checks"] and sanity["failed"] == sum(not c["passed"] for c in sanity["checks"])
    assert code == (1 if sanity["failed"] else 0)
    assert ("FAILED" in summary) == bool(sanity["failed"])
    grads = sanity["gradient_checks"]
    assert grads and all(g["zero_fraction"] == 0 and g["nonfinite_fraction"] == 0 for g in grads)
    assert "clean" in log and "robust" in log


def test_rerun_reuses_results_unless_forced(suite, workspace, capsys):
    out, _, _ = suite
    before = {p: p.read_text() for p in result_files(out)}
    main(cli(workspace, out, *SUITE))
    log = capsys.readouterr().out
    assert log.count("reused") == len(before)
    assert {p: p.read_text() for p in result_files(out)} == before
    main(cli(workspace, out, "--attacks", "fgsm", "--eps", "0.1", "--threat-models",
             "end-to-end", "--force", "--no-sanity"))  # fmt: skip
    assert "reused" not in capsys.readouterr().out


def test_zero_gradients_fail_the_sanity_checks(workspace, tmp_path, capsys):
    """A hard step without surrogate has zero input gradients: PGD cannot move and the model
    would look robust. The harness must flag it instead."""
    out = tmp_path / "none"
    code = main(cli(workspace, out, "--attacks", "pgd", "--eps", "0.2", "--threat-models",
                    "end-to-end", "--surrogate-gradients", "none"))  # fmt: skip
    assert code == 1
    assert "FAILED" in capsys.readouterr().err
    sanity = json.loads((out / "sanity.json").read_text())
    failed = {c["check"] for c in sanity["checks"] if not c["passed"]}
    assert {"gradients", "large-eps"} <= failed
    assert all(g["zero_fraction"] == 1.0 for g in sanity["gradient_checks"])
    assert (out / "summary.md").read_text().count("**FAILED") >= 3


def test_worst_case_over_surrogates_never_helps_the_defender(workspace):
    from training.checkpoint import load_model

    model, _ = load_model(workspace / "classifier")
    x, y = make_blobs(32, seed=11)
    defence = Defence("none", model)
    kwargs = {"budget": Budget(0.1, steps=2, step_size=0.05), "seed": 0}
    one = evaluate(defence, "end-to-end", "pgd", x, y, surrogates=["rect1"], **kwargs)
    both = evaluate(defence, "end-to-end", "pgd", x, y, surrogates=["rect1", "ste"], **kwargs)
    assert one["threat_model"] == both["threat_model"] == "white-box"
    assert both["robust_correct"] <= one["robust_correct"]
    assert set(both["fooled_by"]) == {"rect1", "ste"}
    assert both["fooled_by"]["rect1"] == one["fooled_by"]["rect1"]


def test_an_interrupted_setting_resumes_from_its_finished_batches(workspace, tmp_path):
    """A long setting keeps the tallies of its finished batches; killed between batches and
    run again it skips them and ends with the uninterrupted run's figures."""
    from training.checkpoint import load_model

    model, _ = load_model(workspace / "classifier")
    x, y = make_blobs(32, seed=12)
    defence = Defence("none", model)
    kwargs = {"budget": Budget(0.2, steps=2, step_size=0.1), "seed": 3, "batch_size": 8}
    expected = evaluate(defence, "end-to-end", "pgd", x, y, **kwargs)
    assert 0 < expected["robust_correct"] < expected["clean_correct"]  # the attack bites

    partial, seen = tmp_path / "setting.partial", []

    def stop_after_two(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(defence, "end-to-end", "pgd", x, y, partial=partial, on_batch=stop_after_two,
                 **kwargs)  # fmt: skip
    assert seen == [(1, 4), (2, 4)]
    assert json.loads(partial.read_text())["batches"] == 2
    calls = []
    resumed = evaluate(defence, "end-to-end", "pgd", x, y, partial=partial,
                       on_batch=lambda done, total: calls.append(done), **kwargs)  # fmt: skip
    assert calls == [3, 4]  # batches 1-2 were not attacked again
    drop = ("seconds",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in expected.items() if k not in drop
    }
    # a tally of other images (another n or batch size) is not used
    partial.write_text(json.dumps({"n": 31, "batch_size": 8, "batches": 3, "clean_correct": 0}))
    fresh = evaluate(defence, "end-to-end", "pgd", x, y, partial=partial, **kwargs)
    assert fresh["robust_correct"] == expected["robust_correct"]


def test_sanity_checks_flag_rising_accuracy_and_strong_transfer():
    def record(threat, eps, steps, correct, purpose="table"):
        lo, hi = wilson_interval(correct, 100)
        return {"defence": "purifier", "threat_model": threat, "attack": "pgd", "eps": eps,
                "steps": steps, "robust_accuracy": float(correct), "robust_ci95": [lo, hi],
                "purpose": purpose}  # fmt: skip

    results = [
        record("end-to-end", 0.03, 7, 20),
        record("end-to-end", 0.06, 7, 60),  # more eps, far more accuracy
        record("transfer", 0.03, 7, 5),  # black-box beats white-box
        record("end-to-end", 0.5, 20, 30, purpose="sanity-large-eps"),
    ]
    failed = {c["check"] for c in sanity_checks(results, []) if not c["passed"]}
    assert failed == {"monotone-eps", "transfer-weaker", "large-eps"}
    results[1] = record("end-to-end", 0.06, 7, 18)
    results[2] = record("transfer", 0.03, 7, 40)
    results[3] = record("end-to-end", 0.5, 20, 0, purpose="sanity-large-eps")
    assert all(c["passed"] for c in sanity_checks(results, []))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attacks", "nosuch"], "unknown attack"),
        (["--eps", "2"], "--eps"),
        (["--threat-models", "transfer", "--steps", "-1"], "--steps"),
        (["--dataset", "cifar10"], "disagree"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["-n", "0"], ""),
    ],
)
def test_bad_arguments_exit_2_with_one_line(workspace, tmp_path, capsys, extra, message):
    assert main(cli(workspace, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_missing_checkpoint_and_transfer_without_source(workspace, tmp_path, capsys):
    args = ["evaluate", "--classifier", str(tmp_path / "nothing"), "--data-dir", "x"]
    assert main(args) == 2
    assert "cannot load classifier checkpoint" in capsys.readouterr().err
    args = ["evaluate", "--classifier", str(workspace / "classifier"), "--threat-models",
            "transfer"]  # fmt: skip
    assert main(args) == 2
    assert "needs --source" in capsys.readouterr().err
    args = ["evaluate", "--classifier", str(workspace / "purifier")]
    assert main(args) == 2
    assert "not a classifier" in capsys.readouterr().err
    args = ["evaluate", "--classifier", str(workspace / "classifier"), "--source",
            str(workspace / "purifier")]  # fmt: skip
    assert main(args) == 2
    assert "holds a purifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--classifier", "c", "--eps", "abc"])
    assert exc.value.code == 2


def test_python_api_runs_without_the_command_line(workspace, tmp_path):
    config = SuiteConfig(
        classifier=str(workspace / "classifier"), attacks=["fgsm"], eps=[0.1],
        threat_models=["end-to-end"], surrogates=["rect1"], n=16, batch_size=16,
        data_dir=str(workspace / "data"), out=str(tmp_path / "api"), sanity=False,
    )  # fmt: skip
    report = run_suite(config, log=lambda line: None)
    assert [r["attack"] for r in report.results] == ["fgsm"]
    assert (report.out_dir / "summary.md").exists()
    # sanity=False skips the large-eps runs; the checks on what was computed still run
    assert {c["check"] for c in report.checks} == {"gradients"}
    assert all(c["passed"] for c in report.checks)


def test_compile_puts_the_attacked_neurons_on_the_compiled_kernels(workspace, tmp_path):
    from training.evaluation.suite import _setup
    from training.snn.neurons import spiking_neurons

    for flag, kernels in ((False, "eager"), (True, "compiled")):
        config = SuiteConfig(
            classifier=str(workspace / "classifier"), attacks=["fgsm"], eps=[0.1], n=8,
            threat_models=["end-to-end"],
            data_dir=str(workspace / "data"), out=str(tmp_path / kernels), compile=flag,
        )  # fmt: skip
        setup = _setup(config)
        model = setup.loaded["classifier"].model
        assert {m.kernels.name for _, m in spiking_neurons(model)} == {kernels}
    parser = argparse.ArgumentParser()
    configure(parser, "evaluate")
    assert parser.parse_args(["--classifier", "x", "--compile"]).compile is True
    assert parser.parse_args(["--classifier", "x"]).compile is False


def test_all_four_defences_are_evaluated(workspace, tmp_path):
    config = SuiteConfig(
        classifier=str(workspace / "classifier"), purifier=str(workspace / "purifier"),
        adv_classifier=str(workspace / "source"), ols_classifier=str(workspace / "source"),
        attacks=["fgsm"], eps=[0.1], threat_models=["end-to-end"], surrogates=["rect1"],
        n=16, batch_size=16, data_dir=str(workspace / "data"), out=str(tmp_path / "all"),
        sanity=False,
    )  # fmt: skip
    report = run_suite(config, log=lambda line: None)
    roles = {r["defence"]: sorted(r["settings"]["checkpoints"]) for r in report.results}
    assert roles == {
        "none": ["classifier"],
        "adv-training": ["adv_classifier"],
        "purifier": ["classifier", "purifier"],
        "purifier+ols": ["ols_classifier", "purifier"],
    }
    threats = {r["defence"]: r["threat_model"] for r in report.results}
    assert threats["none"] == threats["adv-training"] == "white-box"
    assert threats["purifier"] == threats["purifier+ols"] == "end-to-end"
    summary = (report.out_dir / "summary.md").read_text()
    assert "| purifier+ols |" in summary and "| adv-training (white-box) |" in summary


def test_autoattack_result_counts_what_each_component_fooled(workspace):
    from training.checkpoint import load_model

    model, _ = load_model(workspace / "classifier")
    x, y = make_blobs(24, seed=12)
    result = evaluate(Defence("none", model), "end-to-end", "autoattack", x, y,
                      budget=Budget(0.1), surrogates=["rect1", "ste"], seed=0)  # fmt: skip
    stages = result["fooled_by_stage"]
    assert {k.split("/")[0] for k in stages} <= {"rect1", "ste"}
    assert {k.split("/")[1] for k in stages} <= {"apgd-ce", "apgd-t", "fab-t", "square"}
    fooled = result["clean_correct"] - result["robust_correct"]
    assert sum(stages.values()) == sum(result["fooled_by"].values()) == fooled > 0
    # the whole cascade with the first surrogate; the second runs the white-box part only
    assert "rect1/square" in stages and "ste/apgd-ce" in stages and "ste/square" not in stages
