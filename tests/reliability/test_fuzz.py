"""Schemathesis against the service's own OpenAPI schema, on a real ``python -m service``.

Every operation in the schema gets generated requests (the ``ci`` Hypothesis profile's
example count in ``make test``, the ``fuzz`` profile's in ``make fuzz``); every response must
be free of 5xx and match the schema: documented status, documented body, content type.

The schema is the application's own (``create_app().openapi()``), loaded at collection; the
first test checks that the running service serves exactly that schema.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from reliability_helpers import ServiceProcess

from service.app import create_app
from service.config import Settings

OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def fuzzed_service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("fuzz-service"))
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.stop()


def test_the_fuzzed_schema_is_the_served_one(fuzzed_service: str) -> None:
    assert httpx.get(f"{fuzzed_service}/openapi.json").json() == OPENAPI


# Every check but one: the schema cannot say that an upload must be a decodable image or
# that a V2 tensor's data must fit its shape, so schema-valid requests are refused (400,
# 413, 415, 422) by design. Negative data must still be refused, 5xx never happen.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def statuses() -> Iterator[Counter]:
    """(operation, status) of every fuzzed request; written as JSON to the path in
    SPIKEGUARD_FUZZ_REPORT when that is set (``make fuzz`` prints it)."""
    seen: Counter = Counter()
    yield seen
    report = os.environ.get("SPIKEGUARD_FUZZ_REPORT")
    if report:
        by_status = Counter()
        for (_, status), count in seen.items():
            by_status[status] += count
        summary = {
            "requests": sum(seen.values()),
            "by_status": dict(sorted(by_status.items())),
            "by_operation": {f"{op} -> {status}": n for (op, status), n in sorted(seen.items())},
        }
        Path(report).write_text(json.dumps(summary, indent=2) + "\n")


@pytest.fixture(scope="module")
def served_model(fuzzed_service: str) -> dict[str, str]:
    return httpx.get(f"{fuzzed_service}/readyz").json()["model"]


@schema.parametrize()
def test_responses_match_the_schema(
    case, fuzzed_service: str, statuses: Counter, served_model: dict[str, str]
) -> None:
    # Every other request to /v2/models/{name}/... names the served model, so that the
    # generated bodies reach the handlers instead of stopping at 404 model_not_found.
    parameters = case.path_parameters or {}
    if "name" in parameters and sum(statuses.values()) % 2 == 0:
        parameters["name"] = served_model["name"]
        if "version" in parameters:
            parameters["version"] = served_model["version"]
    response = case.call(base_url=fuzzed_service)
    statuses[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)


def test_the_fuzzer_sent_valid_and_invalid_requests(statuses: Counter) -> None:
    """Runs after the fuzzing above: it reached every operation, and its requests were both
    accepted and refused (schema-valid and schema-violating data were generated)."""
    operations = {op for op, _ in statuses}
    assert operations == {
        f"{method.upper()} {path}" for path, ops in OPENAPI["paths"].items() for method in ops
    }
    seen = {status for _, status in statuses}
    assert 200 in seen and 422 in seen, statuses
    assert not [status for status in seen if status >= 500], statuses
