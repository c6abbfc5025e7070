"""``ServiceProcess``: a real ``python -m service`` on 127.0.0.1.

Its ``SPIKEGUARD_*`` settings come from the arguments only (the caller's environment's are
dropped), with one ORT thread and the CPU provider unless a setting says otherwise; its
output goes to ``<log_dir>/service.log``. The tests (``tests/service``, ``tests/e2e``,
``tests/reliability``, ``tests/deploy``), ``bench/service_load.py`` and ``bench/soak.py``
all start the service through it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from .processes import REPO, Daemon, free_port

READY_TIMEOUT_S = 90.0


def service_env(model_dir: Path | str, port: int, **settings) -> dict[str, str]:
    """The environment: the caller's without its ``SPIKEGUARD_*`` (``OMP_NUM_THREADS``
    1 unless the caller sets it), then one ORT thread, the CPU provider,
    then ``settings`` (a setting of None leaves the variable unset: the service's own
    default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIKEGUARD_")}
    env |= {
        "SPIKEGUARD_MODEL_DIR": str(model_dir),
        "SPIKEGUARD_HOST": "127.0.0.1",
        "SPIKEGUARD_PORT": str(port),
        "SPIKEGUARD_INTRA_OP_THREADS": "1",
        "SPIKEGUARD_PROVIDERS": "cpu",
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    for key, value in settings.items():
        name = f"SPIKEGUARD_{key.upper()}"
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


class ServiceProcess(Daemon):
    """``python -m service`` serving ``model_dir``; ``settings`` become ``SPIKEGUARD_*``
    variables (``max_batch=8`` -> ``SPIKEGUARD_MAX_BATCH=8``). Started at once; ``start()``
    again after a stop or kill keeps the settings and the port."""

    def __init__(
        self,
        model_dir: Path | str,
        log_dir: Path,
        port: int | None = None,
        *,
        python: str = sys.executable,
        **settings,
    ):
        self.port = port or free_port()
        self.model_dir = Path(model_dir)
        env = service_env(model_dir, self.port, **settings)
        super().__init__("service", [python, "-m", "service"], log_dir, env, REPO)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, path: str = "/readyz") -> ServiceProcess:
        """Polls ``path`` (``/readyz``; ``/healthz``: merely live) until 200; raises
        ``AssertionError`` with the log otherwise (the process exited, or the model did not
        load in time)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                last = httpx.get(f"{self.url}{path}", timeout=2)
                if last.status_code == 200:
                    return self
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s: {last}\n{self.log_tail()}")

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
