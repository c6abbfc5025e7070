"""A real ``python -m service`` process under test, and checks shared by the reliability tests
(imported by name: pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_helpers import REPO, free_port

READY_TIMEOUT_S = 90.0


class ServiceProcess:
    """``python -m service`` on 127.0.0.1 with ``SPIKEGUARD_*`` settings from the arguments
    only (the caller's environment's are dropped), one ORT thread, CPU provider."""

    def __init__(self, model_dir: Path, log_dir: Path, port: int | None = None, **settings):
        self.port = port or free_port()
        self.model_dir = model_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPIKEGUARD_")}
        self.env |= {
            "SPIKEGUARD_MODEL_DIR": str(model_dir),
            "SPIKEGUARD_HOST": "127.0.0.1",
            "SPIKEGUARD_PORT": str(self.port),
            "SPIKEGUARD_INTRA_OP_THREADS": "1",
            "SPIKEGUARD_PROVIDERS": "cpu",
            "OMP_NUM_THREADS": "1",
            **{f"SPIKEGUARD_{key.upper()}": str(value) for key, value in settings.items()},
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "service.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the process (again, after a stop or kill: same settings, same port)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the service exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                last = httpx.get(f"{self.url}/readyz", timeout=2)
                if last.status_code == 200:
                    return
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s: {last}\n{self.log_text()[-4000:]}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the process can tell."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


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
