"""Fixtures for the service tests: apps in-process (Starlette's TestClient runs the
lifespan) and as a real ``python -m service`` process on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import png_bytes, wait_ready

from harness.service import ServiceProcess
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
    """``start_server(wait=True, **settings)``: a real ``python -m service`` on
    127.0.0.1:<free port> (``harness.service.ServiceProcess``), ready (or, ``wait=False``,
    live); returns its base URL. Settings become SPIKEGUARD_* variables."""
    processes: list[ServiceProcess] = []

    def start(wait: bool = True, **settings) -> str:
        model_dir = settings.pop("model_dir", tiny_model_dir)
        log_dir = tmp_path / f"service-{len(processes)}"
        processes.append(ServiceProcess(model_dir, log_dir, **settings))
        return processes[-1].wait_ready(path="/readyz" if wait else "/healthz").url

    yield start
    for process in processes:
        process.stop(timeout=10)
