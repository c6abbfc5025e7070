"""Training commands on a tiny generated dataset (IDX files in a temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_data import make_tiny_dataset

from training.__main__ import main
from training.checkpoint import load_model, read_meta
from training.config import TrainConfig
from training.trainers import train

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def tiny_config(tmp_path: Path, data_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        name="run", runs_dir=str(tmp_path), dataset="fashion-mnist", data_dir=str(data_dir),
        width=4, epochs=2, batch_size=32, lr=0.05, milestones=(), val_images=64,
        augment=False, compile=False, progress=False, seed=3,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_classifier_loss_falls_and_run_is_recorded(tmp_path, tiny_data):
    summary = train(tiny_config(tmp_path, tiny_data, epochs=3))
    run_dir = Path(summary["run_dir"])
    log = read_log(run_dir)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["val_acc"] > 30  # chance is 10%
    for name in ("config.json", "latest.safetensors", "best.safetensors", "curves.png"):
        assert (run_dir / name).exists(), name
    model, meta = load_model(run_dir)
    assert meta["dataset"] == "fashion-mnist" and meta["kind"] == "train-classifier"
    assert meta["config"]["width"] == 4


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, tiny_data):
    full = train(tiny_config(tmp_path / "a", tiny_data, epochs=2))
    train(tiny_config(tmp_path / "b", tiny_data, epochs=1))
    # the "interrupted" run is continued with a longer schedule: --resume with epochs 2
    cfg = tiny_config(tmp_path / "b", tiny_data, epochs=2)
    config_path = tmp_path / "b" / "run" / "config.json"
    saved = json.loads(config_path.read_text())
    saved["epochs"] = 2  # same run, extended (as a killed 2-epoch run would be)
    config_path.write_text(json.dumps(saved))
    resumed = train(cfg, resume=True)
    assert resumed["rank_param_digests"] == full["rank_param_digests"]
    assert [r["epoch"] for r in read_log(tmp_path / "b" / "run")] == [1, 2]
    assert read_log(tmp_path / "b" / "run")[-1]["train_loss"] == pytest.approx(
        read_log(tmp_path / "a" / "run")[-1]["train_loss"]
    )


@pytest.mark.slow
def test_existing_run_is_refused_without_force(tmp_path, tiny_data, capsys):
    args = [
        "train-classifier", "--runs-dir", str(tmp_path), "--name", "r", "--data-dir",
        str(tiny_data), "--width", "4", "--epochs", "1", "--batch-size", "64",
        "--no-compile", "--no-progress", "--val-images", "32",
    ]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--force" in err[0]
    assert main([*args, "--force"]) == 0
    moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(moved) == 1  # the old run was moved aside, not deleted


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "no_such_net"], "unknown classifier"),
        (["--eval-eps", "-0.1"], "--eval-eps must be >= 0"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "not found in /nonexistent"),
        (["--thresholds", "1.6,0.6"], "increasing"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, needle):
    code = main(["train-classifier", "--runs-dir", str(tmp_path), "--epochs", "1", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err


def test_unknown_command_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["adv-train", "--adv-steps", "many"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_adversarial_training_uses_examples_inside_the_ball(tmp_path, tiny_data, monkeypatch):
    from training.trainers import classifier as train_module

    seen = []
    real_build = train_module.build_attack

    def recording_build(name, model, budget, **kw):
        attack = real_build(name, model, budget, **kw)

        def recording(x, y):
            x_adv = attack(x, y)
            linf = (x_adv - x).abs().max().item()
            seen.append((linf, x_adv.min().item(), x_adv.max().item(), budget.eps))
            return x_adv

        return recording

    monkeypatch.setattr(train_module, "build_attack", recording_build)
    cfg = tiny_config(tmp_path, tiny_data, command="adv-train", epochs=1, adv_eps=0.1,
                      adv_alpha=0.05, adv_steps=2)  # fmt: skip
    summary = train(cfg)
    assert seen, "adversarial training never called PGD"
    for linf, lo, hi, eps in seen:
        assert eps == 0.1 and linf <= eps + 1e-6 and lo >= 0 and hi <= 1
    assert any(linf > 0.05 for linf, *_ in seen)  # the examples really are perturbed
    assert "val_robust_acc" in summary["final"]


@pytest.mark.slow
def test_purifier_training_lowers_reconstruction_error(tmp_path, tiny_data):
    classifier = train(tiny_config(tmp_path, tiny_data, name="clf", epochs=3))
    cfg = tiny_config(
        tmp_path, tiny_data, command="train-purifier", name="pur", classifier=classifier["run_dir"],
        epochs=3, lr=3e-3, batch_size=32, eval_eps=0.1, charbonnier_epochs=1, beta=0.5,
    )  # fmt: skip
    summary = train(cfg)
    log = read_log(Path(summary["run_dir"]))
    assert log[-1]["train_rec"] < log[0]["train_rec"]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    meta = read_meta(Path(summary["run_dir"]) / "best.safetensors")
    assert meta["attack"] == {
        "name": "fgsm", "eps": pytest.approx(0.2), "steps": 7, "eps_min": None,
        "clean_fraction": 0.0, "target": "classifier",
    }  # fmt: skip
    purifier, _ = load_model(summary["run_dir"])
    purified, noise = purifier(torch.rand(2, 1, 12, 12))
    assert purified.shape == noise.shape == (2, 1, 12, 12)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
@pytest.mark.system
def test_distributed_two_processes_stay_in_sync(tmp_path, tiny_data):
    # gloo on the loopback interface only: by default it resolves the host name and may
    # pick another interface, which a test must not use
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
        "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", "2", "-m", "training", "train-classifier",
        "--runs-dir", str(tmp_path), "--name", "ddp", "--data-dir", str(tiny_data),
        "--width", "4", "--epochs", "1", "--batch-size", "32", "--no-augment",
        "--no-compile", "--no-progress", "--val-images", "32", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_mixed_purifier_batch_keeps_clean_images_and_draws_eps_per_image():
    """The shipped purifier's input: the first quarter clean, the rest FGSM at its own eps,
    exactly ``clip(x + eps_i * sign(grad))``."""
    from training.attacks import fgsm
    from training.trainers.purifier import mixed_purifier_batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    gen = torch.Generator().manual_seed(1)
    out = mixed_purifier_batch("fgsm", model, x, y, 0.2, 1, gen, clean_fraction=0.25, eps_min=0.05)
    assert torch.equal(out[:4], x[:4])
    linf = (out - x).flatten(1).abs().amax(1)[4:]
    assert (linf >= 0.05 - 1e-6).all() and (linf <= 0.2 + 1e-6).all()
    assert linf.std() > 0.01  # the epsilons differ from image to image
    for i in range(4, 16):
        eps_i = float(linf[i - 4])
        expected = fgsm(model, x[i : i + 1], y[i : i + 1], eps_i)
        assert torch.allclose(out[i : i + 1], expected, atol=1e-6), i


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--clean-fraction", "1"], "--clean-fraction must be in [0, 1)"),
        (["--attack", "pgd", "--attack-eps-min", "0"], "--attack-eps-min works with"),
        (["--attack-eps-min", "0.5"], "--attack-eps-min must be in [0"),
        (["--attack", "gaussian", "--attack-target", "pipeline"], "needs a gradient attack"),
    ],
)
def test_purifier_mix_flags_are_checked(tmp_path, tiny_data, capsys, flags, needle):
    classifier = tmp_path / "c.safetensors"
    classifier.write_bytes(b"")  # validation runs before any checkpoint is read
    args = ["train-purifier", "--classifier", str(classifier), "--data-dir", str(tiny_data),
            "--runs-dir", str(tmp_path), "--eval-eps", "0.1", *flags]  # fmt: skip
    assert main(args) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_adaptive_purifier_training_attacks_through_the_current_purifier(
    tmp_path, tiny_data, monkeypatch
):
    """--attack-target pipeline: every training batch's attack differentiates through the
    purifier being trained (in eval mode) and the classifier, and what it sees moves with
    the purifier's weights: the input gradient through two different purifiers differs."""
    from training.threat_models import PurifiedClassifier
    from training.trainers import purifier as purifier_module

    classifier = train(tiny_config(tmp_path, tiny_data, name="clf", epochs=3))
    assert classifier["final"]["val_acc"] > 30, classifier["final"]  # not a silent network
    seen = []
    real_attack = purifier_module.purifier_attack

    def recording(name, model, x, y, eps, steps, gen):
        x_adv = real_attack(name, model, x, y, eps, steps, gen)
        if isinstance(model, PurifiedClassifier):
            seen.append((model.purifier.training, (x_adv - x).abs().max().item()))
        return x_adv

    monkeypatch.setattr(purifier_module, "purifier_attack", recording)
    cfg = tiny_config(
        tmp_path, tiny_data, command="train-purifier", name="pur-adaptive",
        classifier=classifier["run_dir"], epochs=1, lr=3e-3, eval_eps=0.1, attack="pgd",
        attack_steps=2, attack_eps=0.1, clean_fraction=0.25, attack_target="pipeline",
    )  # fmt: skip
    summary = train(cfg)
    assert seen, "no attack went through the purifier"
    assert all(not training for training, _ in seen)  # crafted in eval mode
    assert all(0.05 < linf <= 0.1 + 1e-6 for _, linf in seen)  # really perturbed, in the ball
    meta = read_meta(Path(summary["run_dir"]) / "best.safetensors")
    assert meta["attack"]["target"] == "pipeline" and meta["attack"]["name"] == "pgd"

    trained, _ = load_model(summary["run_dir"])
    other, _ = load_model(summary["run_dir"])
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    clf, _ = load_model(classifier["run_dir"])
    x = torch.rand(8, 1, 12, 12)
    y = clf.eval()(x).argmax(1)
    grads = []
    for purifier in (trained, other):
        x_var = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(PurifiedClassifier(purifier.eval(), clf)(x_var), y)
        (grad,) = torch.autograd.grad(loss, x_var)
        grads.append(grad)
    assert grads[0].abs().sum() > 0  # the gradient reaches the input through the purifier
    assert not torch.allclose(grads[0], grads[1])
