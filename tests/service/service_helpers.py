"""Helpers shared by the service tests (imported by name: pytest puts this directory on
``sys.path``)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from harness.processes import free_port

__all__ = ["free_port"]

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


def wait_ready(
    get: Callable[[str], httpx.Response], timeout: float = READY_TIMEOUT_S, path: str = "/readyz"
) -> None:
    """Polls ``path`` (/readyz) until 200; fails with the last reason otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get(path)
            if last.status_code == 200:
                return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"service not ready after {timeout}s: {getattr(last, 'text', last)}")


def wait_settled(client: TestClient, timeout: float = READY_TIMEOUT_S) -> httpx.Response:
    """Polls /readyz until the model has either loaded or failed; returns the response."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 or "loading" not in response.text:
            return response
        time.sleep(0.05)
    raise AssertionError("the model neither loaded nor failed")


def png_bytes(image: Image.Image, format: str = "PNG", **save_args) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **save_args)
    return out.getvalue()
