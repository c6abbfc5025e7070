"""``bench/run.py``'s measuring loop: images/s per engine and batch, and the raw pipeline's
best as the service rounds take it, on engines whose call time is fixed (no clock read)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run  # noqa: E402

SECONDS_PER_IMAGE = {"one": 0.004, "streams": 0.006}  # per image of one call's batch


@pytest.fixture
def fixed_clock(monkeypatch):
    """median_seconds returns what the engine's call says it took, after calling it once."""
    calls = []

    def median_seconds(step, repeats):
        return step()

    monkeypatch.setattr(run, "median_seconds", median_seconds)
    return calls


def engine(name: str, calls: list):
    def call(images: np.ndarray) -> float:
        calls.append((name, len(images)))
        return SECONDS_PER_IMAGE[name] * len(images)

    return call


def test_every_engine_at_every_batch_size_counts_the_batches_a_call_infers(fixed_clock):
    engines = {
        "one": (engine("one", fixed_clock), 1),
        "streams": (engine("streams", fixed_clock), 2),
    }
    rates = run.engine_rates(engines, np.zeros((64, 1, 28, 28), np.float32), repeats=3)
    assert set(rates) == {(n, b) for n in engines for b in run.BATCH_SIZES}
    for batch in run.BATCH_SIZES:
        assert rates["one", batch] == pytest.approx(1 / 0.004)
        # two batches per call: twice the images in the call's time
        assert rates["streams", batch] == pytest.approx(2 / 0.006)
    # batches are the first images of the test set, engines interleaved within a batch size
    assert fixed_clock == [(n, b) for b in run.BATCH_SIZES for n in engines]


def test_the_raw_rate_names_its_best_engine_and_batch(fixed_clock):
    raw = run.RawRate.__new__(run.RawRate)  # no sessions: the engines are the fakes above
    raw.engines = {
        "one": (engine("one", fixed_clock), 1),
        "streams": (engine("streams", fixed_clock), 2),
    }
    raw.images, raw.repeats = np.zeros((64, 1, 28, 28), np.float32), 3
    measured = raw()
    # every batch size ties: the first measured is named
    assert measured["engine_batch"] == f"streams {run.BATCH_SIZES[0]}"
    assert measured["images_per_s"] == pytest.approx(2 / 0.006)
    assert measured["rates"][f"one {run.BATCH_SIZES[-1]}"] == pytest.approx(1 / 0.004)
