"""The real thing: ``python -m service`` under uvicorn on 127.0.0.1, over TCP."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import REPO


def test_classify_over_tcp(start_server, fashion_png):
    url = start_server()
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        response = http.post("/classify", files={"file": ("x.png", fashion_png)})
        assert response.status_code == 200, response.text
        assert response.json()["spikes"]["classifier"] > 0
        bad = http.post("/classify", files={"file": ("x.png", b"no image")})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_an_image"
        assert "spikeguard_model_info" in http.get("/metrics").text


def test_concurrent_requests_are_batched(start_server, fashion_png):
    """16 requests at once against a batcher that waits 300 ms for company: at least one
    batch holds more than one image (the batch-size histogram shows it)."""
    url = start_server(batch_wait_ms=300, max_batch_size=16)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            responses = await asyncio.gather(
                *[http.post("/classify", files={"file": ("x.png", fashion_png)}) for _ in range(16)]
            )
            return [r.json()["timings_ms"]["batch_size"] for r in responses]

    batch_sizes = asyncio.run(burst())
    assert max(batch_sizes) > 1, batch_sizes
    metrics = httpx.get(f"{url}/metrics").text
    family = next(
        f for f in text_string_to_metric_families(metrics) if f.name == "spikeguard_batch_size"
    )
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    # fewer batches than requests, and some batch above the le=1 bucket
    assert samples[("spikeguard_batch_size_count", None)] < 16
    assert (
        samples[("spikeguard_batch_size_bucket", "1.0")]
        < samples[("spikeguard_batch_size_count", None)]
    )
    assert samples[("spikeguard_batch_size_sum", None)] == 16


def test_bad_settings_exit_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={"SPIKEGUARD_MAX_BATCH_SIZE": "zero", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_batch_size" in result.stderr and "Traceback" not in result.stderr


def test_importing_the_service_does_not_import_torch():
    code = (
        "import sys\n"
        "import service.__main__, service.app\n"
        "service.app.create_app()\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
