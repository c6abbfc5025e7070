"""Faults: SIGTERM under load, a model changed on disk, a slow inference, a crash.

The process tests run ``python -m service`` on 127.0.0.1 (``start_service``); the others
run the app in-process, where the runtime can be slowed down or swapped.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from make_corpus import valid_png
from prometheus_client.parser import text_string_to_metric_families
from reliability_helpers import (
    CLEAN_EXIT,
    ServiceProcess,
    assert_json_error,
    assert_same_answer,
    classify,
)
from service_helpers import wait_ready, wait_settled

from service.app import create_app
from service.config import Settings


def metric(client: httpx.Client | TestClient, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- SIGTERM -------------------------------------------------------------------------------

IN_FLIGHT = 12


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(start_service) -> None:
    """12 requests wait in a batch that gathers for 6 s; SIGTERM arrives meanwhile. The
    listening socket closes at once (new connections refused), every in-flight request is
    answered 200, and the process exits cleanly."""
    service: ServiceProcess = start_service(
        batch_wait_ms=6000, max_batch_size=64, shutdown_timeout_s=20
    )
    image = valid_png()
    finished: list[float] = []

    def one_request(_: int) -> httpx.Response:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            response = classify(client, image)
        finished.append(time.monotonic())
        return response

    with (
        ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool,
        httpx.Client(base_url=service.url, timeout=10) as monitor,
    ):
        futures = [pool.submit(one_request, i) for i in range(IN_FLIGHT)]
        # the metrics request itself is in flight too
        wait_for(
            lambda: metric(monitor, "spikeguard_inflight_requests") >= IN_FLIGHT + 1,
            20,
            f"{IN_FLIGHT} requests in flight",
        )
        service.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 5, "the listening socket to close")
        refused_at = time.monotonic()
        responses = [future.result(timeout=60) for future in futures]

    assert len(finished) == IN_FLIGHT
    assert min(finished) > refused_at, "a request finished before new ones were refused"
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["timings_ms"]["batch_size"] >= 1
    assert service.wait(timeout=30) in CLEAN_EXIT
    log = service.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "Waiting for connections to close" in log, log[-3000:]


def test_shutdown_timeout_bounds_the_drain(start_service) -> None:
    """SPIKEGUARD_SHUTDOWN_TIMEOUT_S reaches uvicorn: a request that would take 20 s more is
    cut off after the 1 s allowed, with a JSON 503 (retry elsewhere), and the process exits."""
    service: ServiceProcess = start_service(
        batch_wait_ms=20_000, max_batch_size=64, shutdown_timeout_s=1
    )
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        httpx.Client(base_url=service.url, timeout=60) as client,
        httpx.Client(base_url=service.url, timeout=10) as monitor,
    ):
        pending = pool.submit(classify, client, valid_png())
        wait_for(
            lambda: metric(monitor, "spikeguard_inflight_requests") >= 2, 20, "a request in flight"
        )
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait(timeout=15) in CLEAN_EXIT
        exited_after = time.monotonic() - signalled
        response = pending.result(timeout=30)
    assert exited_after < 10, exited_after
    assert_json_error(response, 503, "shutting_down")
    assert response.headers["retry-after"] == "1"
    assert "Traceback" not in service.log_text(), service.log_text()[-3000:]


# --- a model changed on disk ---------------------------------------------------------------


def test_model_changed_on_disk_is_not_used_and_a_bad_reload_keeps_the_old_one(
    start_service, model_dir_copy: Path
) -> None:
    service: ServiceProcess = start_service(model_dir=model_dir_copy)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        baseline = classify(client, valid_png()).json()

        # Another graph under the classifier's name: the running sessions never read it.
        classifier = model_dir_copy / "classifier.onnx"
        shutil.copyfile(model_dir_copy / "purifier.onnx", classifier)
        assert_same_answer(classify(client, valid_png()), baseline)

        # SIGHUP: the reload checks sha256, refuses the file, keeps serving the old model.
        service.signal(signal.SIGHUP)
        wait_for(
            lambda: metric(client, "spikeguard_model_reloads_total", result="failed") == 1,
            60,
            "the failed reload",
        )
        assert "sha256" in service.log_text().split("reload failed")[-1]
        assert client.get("/readyz").status_code == 200
        assert_same_answer(classify(client, valid_png()), baseline)

        # A consistent model directory (the original graph, a new version) is taken.
        shutil.copyfile(model_dir_copy.parent / "model-original" / "classifier.onnx", classifier)
        manifest = json.loads((model_dir_copy / "manifest.json").read_text())
        manifest["version"] = "0.0.2-reloaded"
        (model_dir_copy / "manifest.json").write_text(json.dumps(manifest))
        service.signal(signal.SIGHUP)
        wait_for(
            lambda: metric(client, "spikeguard_model_reloads_total", result="ok") == 1,
            60,
            "the successful reload",
        )
        assert client.get("/readyz").json()["model"]["version"] == "0.0.2-reloaded"
        assert_same_answer(classify(client, valid_png()), baseline)
        assert metric(client, "spikeguard_model_info", version="0.0.2-reloaded") == 1
        assert metric(client, "spikeguard_model_info", version=baseline["model"]["version"]) == 0
    service.assert_running()


@pytest.fixture
def model_dir_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A throw-away copy of the tiny model, with a pristine copy beside it."""
    shutil.copytree(tiny_model_dir, tmp_path / "model-original")
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    return tmp_path / "model"


# --- in-process: reload rules and inference timeout ----------------------------------------


@pytest.fixture
def make_client(tiny_model_dir: Path) -> Iterator[Callable[..., TestClient]]:
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


def test_reload_refuses_a_model_with_another_input_shape(
    make_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.state

    client = make_client()
    state = client.app.state.service
    serving = state.runtime
    baseline = classify(client, valid_png()).json()

    def load_other(settings: Settings):
        other = service.state.load_runtime(settings)
        shape = other.manifest.input.model_copy(update={"height": 32, "width": 32})
        other.manifest = other.manifest.model_copy(update={"input": shape})
        return other

    monkeypatch.setattr(service.state, "load_runtime", load_other)
    assert client.portal.call(state.reload) is False
    assert state.runtime is serving
    assert metric(client, "spikeguard_model_reloads_total", result="failed") == 1
    assert_same_answer(classify(client, valid_png()), baseline)


def test_reload_after_a_failed_first_load_serves_the_repaired_model(
    make_client, model_dir_copy: Path
) -> None:
    classifier = model_dir_copy / "classifier.onnx"
    classifier.write_bytes(classifier.read_bytes()[:-1])  # corrupt: sha256 mismatch
    client = make_client(wait=False, model_dir=model_dir_copy)
    assert "sha256" in wait_settled(client).text
    assert_json_error(classify(client, valid_png()), 503, "not_ready")

    shutil.copyfile(model_dir_copy.parent / "model-original" / "classifier.onnx", classifier)
    assert client.portal.call(client.app.state.service.reload) is True
    assert client.get("/readyz").status_code == 200
    assert classify(client, valid_png()).status_code == 200


def test_a_slow_inference_fails_its_request_with_503_and_the_worker_goes_on(
    make_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(inference_timeout_s=1.0)
    baseline = classify(client, valid_png()).json()
    runtime = client.app.state.service.runtime
    run = runtime.run
    released = threading.Event()

    def stuck_once(*args):
        monkeypatch.setattr(runtime, "run", run)  # only the first batch is slow
        released.wait(timeout=30)
        return run(*args)

    monkeypatch.setattr(runtime, "run", stuck_once)
    response = classify(client, valid_png())
    body = assert_json_error(response, 503, "inference_timeout")
    assert "1.0" in body["error"]["message"] and response.headers["retry-after"]
    released.set()
    assert_same_answer(classify(client, valid_png()), baseline)
    assert metric(client, "spikeguard_rejected_requests_total", reason="inference_timeout") == 1


# --- a crash ---------------------------------------------------------------------------------


def test_a_killed_service_restarts_and_is_ready_only_after_warm_up(start_service) -> None:
    """SIGKILL, then the same command with the same settings on the same port (what the
    restart policy does): /readyz answers 503 not_ready (or nothing) until the model has
    loaded and run its warm-up batch, and the first 200 comes after the warm-up's log line."""
    service: ServiceProcess = start_service()
    with httpx.Client(base_url=service.url, timeout=30) as client:
        baseline = classify(client, valid_png()).json()
    service.kill()
    warmed_up_before = service.log_text().count(" ready in ")
    assert warmed_up_before == 1

    service.start()
    seen: list[str] = []
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=service.url, timeout=5) as client:
        while time.monotonic() < deadline:
            service.assert_running()
            try:
                response = client.get("/readyz")
            except httpx.TransportError:
                seen.append("no answer")
                time.sleep(0.02)
                continue
            if response.status_code == 200:
                # the warm-up line of this start is logged before the service turns ready
                assert service.log_text().count(" ready in ") == warmed_up_before + 1
                break
            assert_json_error(response, 503, "not_ready")
            assert response.headers["retry-after"]
            seen.append("not_ready")
            early = classify(client, valid_png())
            if early.status_code != 200:  # the model may have turned ready just now
                assert_json_error(early, 503, "not_ready")
            time.sleep(0.02)
        else:
            raise AssertionError(f"not ready again after 90 s: {seen[-5:]}")
        # loading and warm-up take a good part of a second: the probes every 20 ms see it
        assert "not_ready" in seen, seen
        assert_same_answer(classify(client, valid_png()), baseline)
