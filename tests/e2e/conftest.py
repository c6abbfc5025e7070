"""Fixtures for the demo page: a tiny model with bundled samples, served by a real
``python -m service`` on 127.0.0.1, and headless Debian Chromium driven through Debian's
chromedriver (Selenium). Screenshots go to ``test-artifacts/e2e/`` (git-ignored)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import DEMO_SAMPLES, REPO

from harness.service import ServiceProcess

ARTIFACTS = REPO / "test-artifacts" / "e2e"
READY_TIMEOUT_S = 90.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def demo_model_dir(tiny_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model directory with ``samples/`` added by ``add_samples``."""
    from training.checkpoint import load_model
    from training.samples import add_samples

    model_dir = tmp_path_factory.mktemp("demo") / "model"
    shutil.copytree(tiny_build / "model", model_dir)
    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    add_samples(model_dir, classifier, purifier, **DEMO_SAMPLES)
    return model_dir


@pytest.fixture(scope="module")
def demo_server(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ready ``python -m service`` serving ``demo_model_dir``; yields its base URL."""
    log_dir = tmp_path_factory.mktemp("service")
    # an upload limit small enough to test the page's 413 message
    with ServiceProcess(demo_model_dir, log_dir, max_upload_bytes=100_000) as process:
        yield process.wait_ready(READY_TIMEOUT_S).url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium, offline but for 127.0.0.1, with a fresh profile."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: the demo page test needs Debian's "
            "chromium and chromium-driver packages (`make system-packages` installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
        # every host name but the loopback address fails to resolve: nothing leaves the machine
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
