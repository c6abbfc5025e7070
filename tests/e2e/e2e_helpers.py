"""Constants shared by the demo page tests (imported by name: pytest puts this directory
on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A small sample set with short attacks keeps generation to seconds on the tiny model; the
# records state the steps that really ran.
DEMO_SAMPLES = {"n": 2, "eps": 0.1, "pgd_steps": 3, "apgd_steps": 5}
