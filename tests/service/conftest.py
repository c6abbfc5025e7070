"""Fixtures for the service tests: apps in-process (Starlette's TestClient runs the
lifespan) and as a real ``python -m service`` process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import REPO, free_port, png_bytes, wait_ready

from service.app import create_app
from service.config import Settings


@pytest.fixture
def make_client(tiny_model_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)``: a started in-process app (model loaded unless the
    settings point elsewhere); stopped at the end of the test."""
    started: list[TestClient] = []

    def make(wait: bool = True, **overrides) -> TestClient:
        settings = Settings(**{"model_dir": tiny_model_dir, "intra_op_threads": 1, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        started.append(client)
        if wait:
            wait_ready(client.get)
        return client

    yield make
    for client in started:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def fashion_images() -> tuple[np.ndarray, np.ndarray]:
    """The first 16 Fashion-MNIST test images (uint8 [N, 28, 28]) and labels."""
    from training.data import load_split

    split = load_split("fashion-mnist", train=False).first(16)
    return split.images[:, 0].numpy(), split.labels.numpy()


@pytest.fixture(scope="session")
def fashion_png(fashion_images) -> bytes:
    """A real Fashion-MNIST test image as PNG."""
    return png_bytes(Image.fromarray(fashion_images[0][0], "L"))


@pytest.fixture
def start_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start_server(wait=True, **env)``: a real ``python -m service`` on
    127.0.0.1:<free port>, ready (or, ``wait=False``, live); returns its base URL. Extra
    settings go in as SPIKEGUARD_* variables."""
    processes: list[subprocess.Popen] = []
    logs = []

    def start(wait: bool = True, **settings) -> str:
        port = free_port()
        env = {
            **os.environ,
            "SPIKEGUARD_MODEL_DIR": str(tiny_model_dir),
            "SPIKEGUARD_INTRA_OP_THREADS": "1",
            "SPIKEGUARD_PROVIDERS": "cpu",
            **{f"SPIKEGUARD_{k.upper()}": str(v) for k, v in settings.items()},
        }
        log = open(tmp_path / f"service-{port}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=5) as http:
                wait_ready(http.get, path="/readyz" if wait else "/healthz")
        except AssertionError:
            process.terminate()
            raise AssertionError((tmp_path / f"service-{port}.log").read_text()) from None
        return url

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    for log in logs:
        log.close()
