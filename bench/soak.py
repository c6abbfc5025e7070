"""Soak test through the real gateway: 64 concurrent clients for 60 s, all on 127.0.0.1.

Starts ``python -m service`` (the model directory given, or the tiny test model that
tests/conftest.py builds and caches) and Debian's nginx on deploy/nginx/nginx.conf, rendered
for 127.0.0.1 exactly as tests/deploy does (``start_nginx``), then runs closed-loop clients
against the gateway: each sends its next request when the last one has been answered, a mix
of ``POST /classify`` (9 in 10) and ``POST /purify`` on 28x28 PNGs. Bounded by
``--duration`` and ``--max-requests``; every request has a 30 s timeout.

Each client connects from its own loopback source address (127.0.1.1, 127.0.1.2, ...; the
destination is always 127.0.0.1), so the gateway's per-client limits (20 r/s, 32
connections) apply per client as they would to 64 users; ``--one-source`` sends everything
from 127.0.0.1, which the gateway rate-limits to 20 r/s in all (the rest get 429).

The first ``--warm-up`` seconds (30) run the same load unmeasured: ONNX Runtime's arena
grows to the largest batch the load produces, which is warm-up, not a leak.

Pass criteria (exit status 1 if one fails):
  - no 5xx other than deliberate backpressure (503 from the service, 429 from the gateway);
  - no transport errors (connection refused or reset, timeouts);
  - resident memory of the service process (VmRSS, sampled every 0.25 s) grows less than 5%
    from the first 10% of the measured requests to the last 10%;
  - no traceback in the service's log.
Reports requests sent, answers by status, p50/p90/p99/max latency and throughput, and
writes them to ``--out`` (docs/soak.md) with the command, machine and commit.

    .venv/bin/python bench/soak.py [--model-dir DIR] [--duration 60] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from harness.gateway import start_nginx  # noqa: E402
from harness.service import ServiceProcess  # noqa: E402
from harness.tiny_model import cached_build  # noqa: E402

BACKPRESSURE = {429, 503}
MEMORY_GROWTH_LIMIT = 0.05
REQUEST_TIMEOUT_S = 30.0


def tiny_model_dir() -> Path:
    """The tiny exported model the tests use (built once, cached under .cache/tests/)."""
    return cached_build() / "model"


def images(count: int = 16) -> list[bytes]:
    """28x28 grey PNGs: a bright garment-like block on noise, different for each."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 40, (28, 28), dtype=np.uint8)
        top, left = rng.integers(2, 10, 2)
        pixels[top : top + 16, left : left + 12] = rng.integers(150, 256)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Answer:
    endpoint: str
    status: int
    start: float  # time.monotonic()
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Results:
    answers: list[Answer] = field(default_factory=list)
    transport_errors: Counter = field(default_factory=Counter)
    memory: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), RSS)
    started: float = 0.0  # the measured window: after the warm-up
    finished: float = 0.0


async def client_loop(
    index: int,
    gateway: str,
    source: str,
    bodies: list[bytes],
    deadline: float,
    budget: list[int],
    results: Results,
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        base_url=gateway, transport=transport, timeout=REQUEST_TIMEOUT_S
    ) as client:
        n = index
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            n += 1
            endpoint = "/purify" if n % 10 == 0 else "/classify"
            body = bodies[n % len(bodies)]
            start = time.monotonic()
            try:
                response = await client.post(
                    endpoint, files={"file": ("image.png", body, "image/png")}
                )
            except httpx.TransportError as exc:
                results.transport_errors[type(exc).__name__] += 1
                continue
            results.answers.append(Answer(endpoint, response.status_code, start, time.monotonic()))
            if response.status_code in BACKPRESSURE:
                retry_after = float(response.headers.get("retry-after") or 1)
                await asyncio.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))


async def sample_memory(pid: int, results: Results, stop: asyncio.Event) -> None:
    while not stop.is_set():
        results.memory.append((time.monotonic(), rss_bytes(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    results.memory.append((time.monotonic(), rss_bytes(pid)))


async def run_load(
    gateway: str,
    pid: int,
    concurrency: int,
    warm_up: float,
    duration: float,
    max_requests: int,
    one_source: bool,
) -> Results:
    """``warm_up`` seconds of the same load (answers kept, but outside the measured window),
    then ``duration`` seconds measured."""
    results = Results()
    bodies = images()
    budget = [max_requests]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(pid, results, stop))
    results.started = time.monotonic() + warm_up
    deadline = results.started + duration
    sources = [
        "127.0.0.1" if one_source else f"127.0.{1 + i // 250}.{1 + i % 250}"
        for i in range(concurrency)
    ]
    await asyncio.gather(
        *[
            client_loop(i, gateway, sources[i], bodies, deadline, budget, results)
            for i in range(concurrency)
        ]
    )
    results.finished = time.monotonic()
    stop.set()
    await sampler
    return results


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measured(results: Results) -> list[Answer]:
    """Answers to the requests sent in the measured window, in order of completion."""
    return sorted((a for a in results.answers if a.start >= results.started), key=lambda a: a.end)


def memory_growth(results: Results) -> tuple[float, float, float]:
    """Mean RSS while the first 10% of the measured requests completed, while the last 10%
    did, and the relative growth between them."""
    answers = measured(results)
    first_end = answers[max(0, len(answers) // 10 - 1)].end
    last_start = answers[min(len(answers) - 1, (9 * len(answers)) // 10)].end
    first = [rss for when, rss in results.memory if results.started <= when <= first_end]
    last = [rss for when, rss in results.memory if when >= last_start]
    if not first:  # the first decile finished between two samples: the next sample
        first = [next(rss for when, rss in results.memory if when >= results.started)]
    first_mean, last_mean = float(np.mean(first)), float(np.mean(last))
    return first_mean, last_mean, (last_mean - first_mean) / first_mean


def rss_timeline(results: Results, step: float = 5.0) -> list[float]:
    """RSS (MiB) every ``step`` seconds from the start of the warm-up."""
    start = results.memory[0][0]
    timeline, next_time = [], start
    for when, rss in results.memory:
        if when >= next_time:
            timeline.append(round(rss / 2**20, 1))
            next_time += step
    return timeline


def summarise(results: Results, service_log: str) -> dict:
    answers = measured(results)
    statuses = Counter(a.status for a in results.answers)  # the warm-up's too
    latencies = sorted(a.seconds for a in answers)
    ok = sorted(a.seconds for a in answers if a.status == 200)
    unexpected_5xx = {s: n for s, n in statuses.items() if s >= 500 and s not in BACKPRESSURE}
    first, last, growth = memory_growth(results)
    elapsed = results.finished - results.started
    summary = {
        "requests_sent": len(results.answers) + sum(results.transport_errors.values()),
        "requests_measured": len(answers),
        "responses_by_status": {str(s): n for s, n in sorted(statuses.items())},
        "by_endpoint": {
            endpoint: sum(1 for a in results.answers if a.endpoint == endpoint)
            for endpoint in ("/classify", "/purify")
        },
        "transport_errors": dict(results.transport_errors),
        "unexpected_5xx": {str(s): n for s, n in unexpected_5xx.items()},
        "measured_s": round(elapsed, 2),
        "throughput_rps": round(len(answers) / elapsed, 1),
        "ok_throughput_rps": round(len(ok) / elapsed, 1),
        "latency_ms_all": {
            name: round(percentile(latencies, q) * 1e3, 1)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "latency_ms_200": {
            name: round(percentile(ok, q) * 1e3, 1)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "rss_first_decile_mib": round(first / 2**20, 1),
        "rss_last_decile_mib": round(last / 2**20, 1),
        "rss_growth_percent": round(100 * growth, 2),
        "rss_max_mib": round(max(rss for _, rss in results.memory) / 2**20, 1),
        "memory_samples": len(results.memory),
        "rss_every_5s_mib": rss_timeline(results),
        "service_log_tracebacks": service_log.count("Traceback"),
    }
    summary["checks"] = {
        "no 5xx other than 503/429": not unexpected_5xx,
        "no transport errors": not results.transport_errors,
        f"RSS growth < {MEMORY_GROWTH_LIMIT:.0%}": growth < MEMORY_GROWTH_LIMIT,
        "no traceback in the service log": summary["service_log_tracebacks"] == 0,
        "some requests answered 200": bool(ok),
    }
    summary["passed"] = all(summary["checks"].values())
    return summary


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {cores} cores, load average before the run {load}"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved)


def markdown(summary: dict, args: argparse.Namespace, model_dir: Path, machine_text: str) -> str:
    lines = [
        "# Soak test through the gateway",
        "",
        "Written by `bench/soak.py` (`make soak`); the latest run replaces this file.",
        "",
        f"- when: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"commit {commit()}",
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {machine_text}",
        f"- model: `{shown_path(model_dir)}`",
        f"- load: {args.concurrency} closed-loop clients for {args.warm_up:.0f} s of warm-up "
        f"then {args.duration:.0f} s measured (at most {args.max_requests} requests), "
        + ("all from 127.0.0.1" if args.one_source else "each from its own loopback source address")
        + "; 9 in 10 `POST /classify`, 1 in 10 `POST /purify`; through nginx on "
        "deploy/nginx/nginx.conf to one `python -m service`",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests sent (warm-up included) / in the measured window | "
        f"{summary['requests_sent']} / {summary['requests_measured']} |",
        f"| answers by status | {summary['responses_by_status']} |",
        f"| transport errors | {summary['transport_errors'] or 'none'} |",
        f"| 5xx other than 503/429 | {summary['unexpected_5xx'] or 'none'} |",
        f"| throughput (all answers / 200s) | {summary['throughput_rps']} / "
        f"{summary['ok_throughput_rps']} requests/s |",
        "| latency, all answers (p50 / p90 / p99 / max) | "
        + " / ".join(f"{v} ms" for v in summary["latency_ms_all"].values())
        + " |",
        "| latency, 200s (p50 / p90 / p99 / max) | "
        + " / ".join(f"{v} ms" for v in summary["latency_ms_200"].values())
        + " |",
        f"| service RSS, first 10% of measured requests -> last 10% | "
        f"{summary['rss_first_decile_mib']} MiB -> {summary['rss_last_decile_mib']} MiB "
        f"({summary['rss_growth_percent']:+.2f}%); peak {summary['rss_max_mib']} MiB |",
        f"| tracebacks in the service log | {summary['service_log_tracebacks']} |",
        "",
        "| check | result |",
        "| --- | --- |",
        *[f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in summary["checks"].items()],
        "",
        "Statuses, transport errors and tracebacks count the whole run, warm-up included;",
        "latency, throughput and memory growth the measured window. The warm-up lets ONNX",
        "Runtime's arena grow to the largest batch the load produces before memory is",
        "compared. Latencies are measured by the clients, through the gateway, and include",
        "queueing: on a small shared CPU they describe this machine under this load, not the",
        "service's floor. Raw figures:",
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="default: the tests' tiny model")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument(
        "--warm-up", type=float, default=30.0, help="seconds of the same load before them"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=100_000, help="hard request cap")
    parser.add_argument("--one-source", action="store_true", help="every client on 127.0.0.1")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "soak.md")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 1000 or not 0 < args.duration + args.warm_up <= 600:
        parser.error("concurrency must be 1..1000 and warm-up + duration at most 600 s")

    model_dir = args.model_dir or tiny_model_dir()
    machine_text = machine()
    with tempfile.TemporaryDirectory(prefix="spikeguard-soak-") as workdir:
        # the service's own thread default: the soak measures the deployed configuration
        service = ServiceProcess(model_dir, Path(workdir), intra_op_threads=None)
        try:
            base = service.wait_ready(120).url
            gateway = start_nginx(f"127.0.0.1:{service.port}", Path(workdir))
            try:
                print(
                    f"soak: {args.concurrency} clients for {args.duration:.0f} s through "
                    f"{gateway.url} -> {base} (pid {service.proc.pid})",
                    flush=True,
                )
                results = asyncio.run(
                    run_load(
                        gateway.url,
                        service.proc.pid,
                        args.concurrency,
                        args.warm_up,
                        args.duration,
                        args.max_requests,
                        args.one_source,
                    )
                )
                service.assert_running()
            finally:
                gateway.daemon.stop()
        finally:
            service.stop()
        summary = summarise(results, service.log_text())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(summary, args, model_dir, machine_text))
    print(json.dumps(summary, indent=2))
    print(f"soak: {'passed' if summary['passed'] else 'FAILED'}; wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
