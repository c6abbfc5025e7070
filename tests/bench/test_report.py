"""``bench/report.py``: the settings rule on synthetic sweep rows, and the inference table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report  # noqa: E402


def results(loaded: dict[tuple[int, float], float], lone: dict[tuple[int, float], float]) -> dict:
    """A run's service rows: req/s at concurrency 32 and p50 ms at concurrency 1 per
    (cap, wait); the defaults (32, 0) also as the "native" server."""
    rows = []
    for (cap, wait), value in loaded.items():
        for mode in ("sweep", "native") if (cap, wait) == (32, 0.0) else ("sweep",):
            common = {"mode": mode, "max_batch_size": cap, "batch_wait_ms": wait}
            rows.append({**common, "concurrency": 32, "requests_per_s": value, "p50_ms": 50.0})
            rows.append({**common, "concurrency": 1, "requests_per_s": 1e3 / lone[cap, wait],
                         "p50_ms": lone[cap, wait], "p99_ms": lone[cap, wait] * 1.2})  # fmt: skip
    inference = [{"engine": "native", "batch": b, "images_per_s": 100.0} for b in (1, 8, 32, 64)]
    return {"service": rows, "inference": inference, "threads": 2}


def settings_line(run: dict) -> str:
    (line,) = [line for line in report.recommended_settings(run) if "Settings" in line]
    return line


GRID = [(cap, wait) for cap in (8, 16, 32) for wait in (0.0, 2.0)]


def test_a_cap_is_not_chosen_on_a_lone_requests_drift():
    loaded = dict.fromkeys(GRID, 100.0)
    lone = {key: 15.0 + 5 * key[1] for key in GRID} | {(16, 0.0): 10.0}  # drift at wait 0
    assert "keep SPIKEGUARD_MAX_BATCH_SIZE=32" in settings_line(results(loaded, lone))


def test_a_clear_throughput_win_is_recommended():
    loaded = dict.fromkeys(GRID, 100.0) | {(8, 0.0): 150.0}
    lone = {key: 15.0 for key in GRID}
    assert "SPIKEGUARD_MAX_BATCH_SIZE=8, SPIKEGUARD_BATCH_WAIT_MS=0" in settings_line(
        results(loaded, lone)
    )


def test_a_shorter_wait_that_answers_sooner_is_recommended():
    grid = [(cap, wait) for cap in (8, 32) for wait in (0.0, 2.0)]
    run = results(dict.fromkeys(grid, 100.0), {key: 8.0 if key[1] == 0 else 15.0 for key in grid})
    for row in run["service"]:  # this run's defaults wait 2 ms
        if row["mode"] == "native":
            row["batch_wait_ms"] = 2.0
    line = settings_line(run)
    assert "SPIKEGUARD_MAX_BATCH_SIZE=32, SPIKEGUARD_BATCH_WAIT_MS=0 rather than" in line
    assert "defaults (32, 2 ms)" in line


def test_inference_table_shows_what_the_other_threads_add():
    rates = {"unrolled": 50.0, "native": 150.0, "native_streams": 240.0, "native_1thread": 160.0}
    run = {
        "inference": [
            {"engine": engine, "batch": b, "images_per_s": rate * (1 + b / 64)}
            for engine, rate in rates.items()
            for b in report.BATCH_SIZES
        ]
    }
    header, _, *rows = report._inference_table(run)[3:]
    assert header.endswith("| native / today | threads together / one thread alone |")
    assert [row.rsplit("|", 3)[1:3] for row in rows] == [[" 3.00 ", " 1.50 "]] * 4
    without = [r for r in run["inference"] if r["engine"] != "native_1thread"]
    assert "alone" not in "".join(report._inference_table({"inference": without}))


def test_the_service_ratio_pairs_each_round_with_the_raw_rate_beside_it():
    """The target ratio is the median of the rounds' own ratios (each round's req/s over the
    raw rate measured at its start), not the median req/s over the inference section's
    best; without per-round raw rates it falls back to the latter."""
    inference = [
        {"engine": "native_streams", "batch": b, "images_per_s": rate}
        for b, rate in ((8, 600.0), (32, 550.0))
    ]
    row = {"requests_per_s": 450.0, "rounds": [450.0, 300.0, 520.0]}
    raw_rounds = [
        {"images_per_s": rate, "engine_batch": "native_streams 8"} for rate in (500, 400, 650)
    ]
    run = {"inference": inference, "service_raw_rounds": raw_rounds}
    value, name = report.service_ratio(run, row, "multipart form")
    assert value == 0.8  # median of 0.9, 0.75, 0.8
    assert "450/500, 300/400, 520/650" in name and "600/s, 0.75" in name
    value, name = report.service_ratio({"inference": inference}, row, "multipart form")
    assert value == 0.75 and "batch 8: 600/s" in name
    text = "\n".join(report._service_table(run | {"service": [
        {"mode": "native", "max_batch_size": 32, "batch_wait_ms": 0, "concurrency": 32,
         "requests": 1000, "requests_per_s": 450.0, "p50_ms": 60.0, "p99_ms": 90.0,
         "errors": {}}]}))  # fmt: skip
    assert "round 2: 400 images/s (one batch per thread, batch 8)" in text
