"""Checks shared by the reliability tests (imported by name: pytest puts this directory on
``sys.path``); the service process under test is ``harness.service.ServiceProcess``."""

from __future__ import annotations

import signal

import httpx

from harness.service import READY_TIMEOUT_S, ServiceProcess

__all__ = ["READY_TIMEOUT_S", "ServiceProcess"]

# uvicorn re-raises the signal it stopped on once it has shut down cleanly
CLEAN_EXIT = (0, -signal.SIGTERM)


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """``status`` with the service's error body: exactly ``{"error": {"code", "message"}}``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def classify(client: httpx.Client, image: bytes, name: str = "image.png") -> httpx.Response:
    return client.post("/classify", files={"file": (name, image, "image/png")})


def assert_same_answer(response: httpx.Response, baseline: dict) -> None:
    """A valid request answered as before: same label, same confidence (same model, same
    image, batch of one)."""
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["label"] == baseline["label"], (body, baseline)
    assert abs(body["confidence"] - baseline["confidence"]) < 1e-5, (body, baseline)
