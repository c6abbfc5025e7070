"""``training/samples.py``: the bundled demo samples, their attacks and their labels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import DEMO_SAMPLES
from PIL import Image

from training.samples import VARIANTS, default_eps, quantize


def _pixels(model_dir: Path, record: dict) -> np.ndarray:
    return np.asarray(Image.open(model_dir / record["file"]), dtype=np.int16)


@pytest.fixture(scope="module")
def records(demo_model_dir: Path) -> list[dict]:
    return json.loads((demo_model_dir / "manifest.json").read_text())["samples"]


def test_every_test_image_has_each_variant_stored_and_hashed(
    demo_model_dir: Path, records: list[dict]
):
    sources = sorted({r["source"] for r in records})
    assert len(sources) == DEMO_SAMPLES["n"]
    assert [r["id"] for r in records] == [f"{s}-{v}" for s in sources for v in VARIANTS]
    for record in records:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", record["id"])
        assert record["file"] == f"samples/{record['id']}.png"
        data = (demo_model_dir / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert sorted(p.name for p in (demo_model_dir / "samples").iterdir()) == sorted(
        f"{r['id']}.png" for r in records
    )
    # classes in turn: the first sample is class 0, the second class 1
    assert [r["class_index"] for r in records if r["variant"] == "clean"] == [0, 1]
    assert records[0]["label"] == "T-shirt/top"


def test_labels_name_the_threat_model_and_the_budget_that_ran(records: list[dict]):
    eps, pgd_steps, apgd_steps = (DEMO_SAMPLES[k] for k in ("eps", "pgd_steps", "apgd_steps"))
    for record in records:
        variant = record["variant"]
        if variant == "clean":
            assert record["threat_model"] is None and record["attack"] is None
            assert record["eps"] == 0 and record["steps"] == 0
            continue
        assert record["eps"] == eps and record["attack"]["eps"] == eps
        if variant == "autoattack":
            assert record["threat_model"] == "classifier-only" and record["steps"] == apgd_steps
            attack = record["attack"]
            assert attack["components"] == ["apgd-ce", "apgd-t"]
            assert attack["not_run"] == ["fab-t", "square"]
            assert attack["apgd-ce"]["steps"] == attack["apgd-t"]["steps"] == apgd_steps
        else:
            expected = "end-to-end" if variant == "pgd-end-to-end" else "classifier-only"
            assert record["threat_model"] == expected
            assert record["attack"]["attack"] == "pgd" and record["steps"] == pgd_steps
            assert record["attack"]["steps"] == pgd_steps
        assert record["threat_model_note"]


def test_adversarial_images_stay_in_the_eps_ball(demo_model_dir: Path, records: list[dict]):
    budget = np.floor(DEMO_SAMPLES["eps"] * 255 + 1e-6)
    clean = {r["source"]: _pixels(demo_model_dir, r) for r in records if r["variant"] == "clean"}
    for record in records:
        diff = np.abs(_pixels(demo_model_dir, record) - clean[record["source"]])
        assert diff.max() <= budget, record["id"]
    by_id = {r["id"]: _pixels(demo_model_dir, r) for r in records}
    for source in clean:
        pgd, end_to_end = by_id[f"{source}-pgd"], by_id[f"{source}-pgd-end-to-end"]
        assert np.abs(pgd - clean[source]).max() > 0  # PGD starts at a random point
        # same random start, different gradients: the purifier is in the attacked model
        assert not np.array_equal(pgd, end_to_end)


def test_quantize_rounds_inside_the_ball():
    x = torch.tensor([[[[0.0, 100 / 255, 1.0, 200 / 255]]]])
    x_adv = torch.tensor([[[[0.2, 100 / 255 + 0.1, 0.5, 0.85]]]])
    levels = quantize(x_adv, x, 0.1).astype(int)
    # budget floor(25.5) = 25 levels; 100 + 25.5 would round to 126
    assert levels.tolist() == [[[[25, 125, 230, 217]]]]


def test_default_eps_comes_from_the_checkpoints():
    assert default_eps({"config": {"eval_eps": 0.1}}, {}) == 0.1
    assert default_eps({"config": None}, {"config": {"eval_eps": 0.05}}) == 0.05
    assert default_eps({}, {}) == pytest.approx(8 / 255)


@pytest.mark.parametrize("flags", [["--samples", "-1"], ["--samples-eps", "2"]])
def test_export_refuses_bad_sample_flags_before_any_work(
    tiny_build: Path, tmp_path: Path, capsys, flags: list[str]
):
    from training.__main__ import main

    out = tmp_path / "model"
    argv = ["export", "--classifier", str(tiny_build / "classifier.safetensors")]
    argv += ["--purifier", str(tiny_build / "purifier.safetensors"), "--out", str(out), *flags]
    assert main(argv) == 2
    assert "--samples" in capsys.readouterr().err
    assert not out.exists()
