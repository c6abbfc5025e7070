"""Load test for ``POST /classify``: requests/s and p50/p99 latency at several concurrencies.

Starts ``python -m service`` on 127.0.0.1 (a free port) for the model directory given, or
targets a running server with ``--url``. Sends real Fashion-MNIST test images (PNG), a
bounded number of requests per concurrency level, after a warm-up.

    .venv/bin/python bench/service_load.py --model-dir models/fashion-mnist \
        --concurrency 1 16 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from harness.service import ServiceProcess  # noqa: E402

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_pngs(count: int) -> list[bytes]:
    """The first ``count`` Fashion-MNIST test images as PNG files."""
    with gzip.open(FASHION_TEST_IMAGES) as f:
        data = f.read()
    images = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def start_server(model_dir: str, env_overrides: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``python -m service`` on ``model_dir`` (``harness.service.ServiceProcess``), ready;
    ``env_overrides`` are ``SPIKEGUARD_*`` variables. Threads and providers are the
    service's own defaults unless an override sets them. Returns the process and its URL;
    its log is in a temporary directory."""
    settings: dict[str, str | None] = {"intra_op_threads": None, "providers": None}
    for name, value in env_overrides.items():
        if not name.startswith("SPIKEGUARD_"):
            raise SystemExit(f"--env {name}: only SPIKEGUARD_* settings are passed on")
        settings[name.removeprefix("SPIKEGUARD_").lower()] = value
    service = ServiceProcess(
        model_dir, Path(tempfile.mkdtemp(prefix="spikeguard-load-")), **settings
    )
    try:
        service.wait_ready(120)
    except AssertionError as exc:
        service.stop()
        raise SystemExit(f"the service did not become ready: {exc}") from None
    return service.proc, service.url


async def run_level(
    url: str,
    images: list[bytes],
    concurrency: int,
    requests: int,
    purify: bool,
    upload: str = "multipart",
) -> dict:
    """``requests`` requests from ``concurrency`` clients; ``upload`` is how each image is
    sent: ``multipart`` (a form with the file in ``file``) or ``raw`` (the PNG as the body,
    ``Content-Type: image/png``)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def worker() -> None:
            for i in counter:
                image = images[i % len(images)]
                body = (
                    {"content": image, "headers": {"content-type": "image/png"}}
                    if upload == "raw"
                    else {"files": {"file": ("image.png", image, "image/png")}}
                )
                start = time.perf_counter()
                response = await http.post(
                    "/classify", params={"purify": str(purify).lower()}, **body
                )
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

        # warm-up: connections opened, every code path taken once
        warm = iter(range(2 * concurrency))
        await asyncio.gather(
            *[
                http.post("/classify", files={"file": ("w.png", images[i % len(images)])})
                for i in warm
            ]
        )
        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "concurrency": concurrency,
        "upload": upload,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
        "p99_ms": ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))],
        "mean_ms": statistics.fmean(ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/fashion-mnist")
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=400, help="requests per level")
    parser.add_argument("--no-purify", action="store_true", help="classify without purifier")
    parser.add_argument(
        "--upload", choices=["multipart", "raw"], default="multipart",
        help="send each image as a multipart form (default) or as the raw body",
    )  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="extra SPIKEGUARD_* settings for the started server",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be >= 1")
    overrides = dict(item.split("=", 1) for item in args.env)
    images = fashion_pngs(64)
    process = None
    url = args.url
    if url is None:
        process, url = start_server(args.model_dir, overrides)
    try:
        readyz = httpx.get(f"{url}/readyz", timeout=5).json()
        results = [
            asyncio.run(run_level(url, images, c, args.requests, not args.no_purify, args.upload))
            for c in args.concurrency
        ]
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
    print(f"model {readyz.get('model')} providers {readyz.get('providers')} at {url}")
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} errors")
    for r in results:
        print(
            f"{r['concurrency']:>11} {r['requests']:>8} {r['requests_per_s']:>8.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors'] or '-'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"readyz": readyz, "results": results}, indent=2))
    return 0 if not any(r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
