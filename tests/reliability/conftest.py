"""Fixtures for the reliability and security tests: hostile inputs, fuzzing, faults.

Helpers come from the neighbouring test packages (imported by name, as there): the service
tests' ``service_helpers``, the deployment tests' ``deploy_helpers`` and the corpus in
``tests/data``. Hypothesis profiles: ``ci`` (the default, sized for ``make test``) and
``fuzz`` (``make fuzz``, ``--hypothesis-profile=fuzz``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parents[1]
for helpers in ("service", "deploy", "data"):
    if str(TESTS / helpers) not in sys.path:
        sys.path.append(str(TESTS / helpers))

from reliability_helpers import ServiceProcess  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
if settings.get_current_profile_name() == "default":  # no --hypothesis-profile given
    settings.load_profile("ci")


@pytest.fixture
def start_service(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start_service(model_dir=None, port=None, wait=True, **settings)``: a real
    ``python -m service`` on 127.0.0.1; stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[ServiceProcess] = []

    def start(
        model_dir: Path | None = None, port: int | None = None, wait: bool = True, **overrides
    ) -> ServiceProcess:
        service = ServiceProcess(
            model_dir or tiny_model_dir, tmp_path / f"service-{len(started)}", port, **overrides
        )
        started.append(service)
        if wait:
            service.wait_ready()
        return service

    yield start
    for service in started:
        service.stop()
