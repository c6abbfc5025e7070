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


BOUNDARY = "spikeguard-load-boundary"


def classify_request(host: str, image: bytes, purify: bool, upload: str) -> bytes:
    """The whole ``POST /classify`` request, head and body, as bytes: ``upload`` is
    ``multipart`` (a form with the file in ``file``) or ``raw`` (the PNG as the body)."""
    if upload == "raw":
        content_type, body = "image/png", image
    else:
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.png"'
                f"\r\nContent-Type: image/png\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
    head = (
        f"POST /classify?purify={str(purify).lower()} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _AnswerReader(asyncio.Protocol):
    """Collects one answer at a time on a keep-alive connection: the head up to the blank
    line, then ``Content-Length`` bytes of body (all the service sends on /classify)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.status = 0
        self.length = -1  # body bytes still to come after the head; -1: head not yet read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.length < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            status_line, _, headers = head.partition(b"\r\n")
            length = None
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if length is None:
                self._finish(RuntimeError(f"an answer without Content-Length: {head[:200]!r}"))
                return
            self.status, self.length = int(status_line.split(b" ", 2)[1]), length
        if len(self.buffer) >= self.length:
            if len(self.buffer) > self.length:
                self._finish(RuntimeError("bytes after the answer, before the next request"))
                return
            self.buffer.clear()
            self.length = -1
            self._finish(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionError("the server closed the connection"))

    def _finish(self, outcome: int | BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads answers
    with a ``Content-Length``. A load generator built on a general client (httpx) spent 2-6
    CPU ms per request here, as much as the service it measured, and on one core set the
    pace itself; asyncio's streams still cost ~0.2 ms per request on the cores the service
    needs. A bare protocol on uvloop (:func:`run`) costs a fraction of that."""

    def __init__(self, transport: asyncio.Transport, reader: _AnswerReader):
        self.transport, self.reader = transport, reader

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        transport, reader = await asyncio.get_running_loop().create_connection(
            _AnswerReader, host, port
        )
        return cls(transport, reader)

    async def send(self, request: bytes) -> int:
        """Sends ``request`` and reads the answer; returns its status."""
        waiter = self.reader.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await waiter

    async def close(self) -> None:
        self.transport.close()


def run(coroutine):
    """Runs ``coroutine`` on uvloop (installed with uvicorn[standard]) where it is present,
    else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def run_level(
    url: str,
    images: list[bytes],
    concurrency: int,
    requests: int,
    purify: bool,
    upload: str = "multipart",
) -> dict:
    """``requests`` requests from ``concurrency`` clients, one connection each, after a
    warm-up of two requests per client; ``upload`` as in :func:`classify_request`."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(requests))
    address = httpx.URL(url)
    host, port = address.host, address.port or 80
    prepared = [classify_request(f"{host}:{port}", image, purify, upload) for image in images]
    connections = await asyncio.gather(*[Connection.open(host, port) for _ in range(concurrency)])
    try:

        async def warm(connection: Connection, first: int) -> None:
            for i in (first, first + concurrency):
                await connection.send(prepared[i % len(prepared)])

        async def worker(connection: Connection) -> None:
            for i in counter:
                start = time.perf_counter()
                status = await connection.send(prepared[i % len(prepared)])
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1

        await asyncio.gather(*[warm(c, k) for k, c in enumerate(connections)])
        start = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in connections])
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*[c.close() for c in connections])
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
            run(run_level(url, images, c, args.requests, not args.no_purify, args.upload))
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
