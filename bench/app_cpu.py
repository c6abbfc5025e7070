"""The application's own CPU per ``POST /classify``, without sockets or uvicorn.

Drives the ASGI app in process (lifespan, then requests built as uvicorn would hand them
over) from ``--concurrency`` coroutines and reports the CPU time of the event-loop thread per
request: routing, middleware, the upload's parsing and decode, batching and the answer;
inference runs on the batcher's thread and is not counted. What uvicorn and the sockets add
shows in ``bench/run.py``'s service rows (the event loop's CPU there, in brackets).

    .venv/bin/python bench/app_cpu.py [--upload multipart|raw] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import service_load  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402

BOUNDARY = service_load.BOUNDARY


def request_parts(image: bytes, upload: str) -> tuple[bytes, bytes]:
    """(content type, body) of one upload."""
    if upload == "raw":
        return b"image/png", image
    whole = service_load.classify_request("127.0.0.1", image, True, "multipart")
    return f"multipart/form-data; boundary={BOUNDARY}".encode(), whole.split(b"\r\n\r\n", 1)[1]


async def classify(app, content_type: bytes, body: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/classify", "raw_path": b"/classify", "root_path": "",
        "query_string": b"purify=true", "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "state": {},
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the client never disconnects
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(args) -> dict:
    app = create_app(Settings(model_dir=args.model_dir, intra_op_threads=1, providers="cpu"))
    service = app.state.service
    await service.load()
    if not service.ready:
        raise SystemExit(f"the model did not load: {service.reason}")
    parts = [request_parts(png, args.upload) for png in service_load.fashion_pngs(64)]
    try:
        for i in range(2 * args.concurrency):  # warm-up: every code path once
            await classify(app, *parts[i % len(parts)])
        pending = iter(range(args.requests))
        statuses: list[int] = []

        async def client() -> None:
            for i in pending:
                statuses.append(await classify(app, *parts[i % len(parts)]))

        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*[client() for _ in range(args.concurrency)])
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        await service.close()
    if set(statuses) != {200}:
        raise SystemExit(f"not every request was answered 200: {sorted(set(statuses))}")
    return {"loop_cpu_ms": 1e3 * cpu / args.requests, "wall_ms": 1e3 * wall / args.requests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(REPO / "models" / "fashion-mnist"))
    parser.add_argument("--upload", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = asyncio.run(measure(args))
    print(
        f"{args.upload}: event-loop CPU {result['loop_cpu_ms']:.3f} ms per request, "
        f"{result['wall_ms']:.2f} ms wall per request ({args.requests} requests, "
        f"concurrency {args.concurrency}, inference on one thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
