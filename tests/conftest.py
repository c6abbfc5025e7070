"""Shared fixtures and markers.

``tiny_model_dir`` is a real model directory of a tiny trained model, built once and cached
(``harness/tiny_model.py``); ``tiny_build`` is a private copy of the whole build.
``system`` marks the tests that start real processes, ``slow`` (set where a test is
defined) the long ones: ``make test-fast`` runs the rest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The repository root goes first on sys.path: pytest puts tests/ there for this file, and
# tests/service/ would otherwise shadow the real ``service`` package as a namespace package.
sys.path.insert(0, str(REPO))

from harness.tiny_model import cached_build  # noqa: E402

# tests under these folders start real processes (service, gateway, browser): ``system``
SYSTEM_FOLDERS = ("deploy", "e2e", "reliability")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks ``system`` the tests under ``SYSTEM_FOLDERS`` and those that start a service
    process (``start_server``); ``slow`` is marked where a test is defined."""
    for item in items:
        folder = Path(item.fspath).relative_to(REPO / "tests").parts[0]
        if folder in SYSTEM_FOLDERS or "start_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the cached build: ``model/``, ``classifier.safetensors``,
    ``purifier.safetensors``. Tests may not modify it; copy ``model/`` first."""
    copy = tmp_path_factory.mktemp("tiny") / "build"
    shutil.copytree(cached_build(), copy)
    return copy


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_build: Path) -> Path:
    """A verified model directory (manifest + ONNX files) of a tiny trained model."""
    return tiny_build / "model"


@pytest.fixture(scope="session")
def kernel_library() -> Path:
    """The library, built with ``make kernel`` when missing or older than its sources."""
    import mlf_kernel

    path = mlf_kernel.PACKAGE_DIR / mlf_kernel.LIBRARY_NAME
    sources = list((mlf_kernel.PACKAGE_DIR / "src").iterdir())
    stale = not path.exists() or any(s.stat().st_mtime > path.stat().st_mtime for s in sources)
    if stale:
        build = subprocess.run(
            ["make", "-s", "kernel"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert build.returncode == 0, f"make kernel failed:\n{build.stdout}\n{build.stderr}"
    return path


@pytest.fixture(scope="session")
def tiny_unrolled_graphs(tiny_build: Path) -> Path:
    """``classifier.onnx`` and ``purifier.onnx`` of the tiny model as the exporter writes
    neurons without lowering them (``export_graph(..., neurons="unrolled")``)."""
    return tiny_build / "unrolled"


@pytest.fixture
def model_dir_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A throw-away copy of ``tiny_model_dir`` for tests that corrupt or edit it."""
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target
