"""The service end to end for bench/run.py: ``/classify`` load levels against real servers
(``bench/service_load.py``), with what each server saw meanwhile."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import report
import service_load


def server_counters(url: str) -> dict[str, float]:
    """Images inferred, batches and seconds per stage so far, from the service's /metrics."""
    wanted = {
        "spikeguard_batch_size_sum": "images",
        "spikeguard_batch_size_count": "batches",
        'spikeguard_stage_duration_seconds_sum{stage="decode"}': "decode_s",
        'spikeguard_stage_duration_seconds_sum{stage="purify"}': "purify_s",
        'spikeguard_stage_duration_seconds_sum{stage="classify"}': "classify_s",
    }
    counters = {}
    prefix = 'spikeguard_request_duration_seconds_bucket{endpoint="/classify",le="'
    for line in service_load.httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            counters[wanted[name]] = float(value)
        elif name.startswith(prefix) and 'status_class="2xx"' in name:
            bound = name[len(prefix) :].split('"', 1)[0]
            counters[f"le {bound}"] = float(value)
    return counters


def server_quantile(delta: dict[str, float], q: float) -> float:
    """The service's own /classify duration (its histogram's bucket bound, ms) under which
    a share ``q`` of this level's requests finished."""
    buckets = sorted(
        (float(k[3:]), v) for k, v in delta.items() if k.startswith("le ") and k != "le +Inf"
    )
    total = delta.get("le +Inf", 0.0)
    for bound, count in buckets:
        if total and count >= q * total:
            return bound * 1e3
    return float("inf")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid``'s main thread: uvicorn's event loop (HTTP, routing,
    decode of small uploads, batching); inference runs on the other threads."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_split(threads: int) -> tuple[set[int], set[int]] | None:
    """(server cores, load-generator cores) when this process may use more cores than the
    server's ``threads``: the server gets ``threads`` cores for everything it does (HTTP,
    decode, inference), the load generator the rest, so the server is measured on the same
    compute as the raw pipeline and does not pay for its own clients. ``None`` otherwise."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) <= threads:
        return None
    return set(cores[:threads]), set(cores[threads:])


def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cores`` (threads it starts later inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


class Server:
    """One service process for the load levels of one configuration; ``split`` (from
    :func:`core_split`) pins it and this load generator to separate cores."""

    def __init__(self, model_dir: Path, env: dict[str, str], split=None):
        self.process, self.url = service_load.start_server(str(model_dir), env)
        self.split = split
        if split:
            pin_process(self.process.pid, split[0])
        self.readyz = service_load.httpx.get(f"{self.url}/readyz", timeout=5).json()

    def level(self, images: list[bytes], concurrency: int, requests: int, purify, upload):
        """One load level; the row adds what the server saw meanwhile (warm-up included):
        the mean batch size, the share of the time spent in inference, CPU per request."""
        own = os.sched_getaffinity(0) if self.split else None
        if self.split:
            os.sched_setaffinity(0, self.split[1])
        try:
            return self._level(images, concurrency, requests, purify, upload)
        finally:
            if own:
                os.sched_setaffinity(0, own)

    def _level(self, images, concurrency, requests, purify, upload) -> dict:
        pid, url, split = self.process.pid, self.url, self.split
        count = max(requests, 4 * concurrency)
        before, start = server_counters(url), time.perf_counter()
        cpu_before = (process_cpu_seconds(pid), time.process_time())
        loop_before = loop_cpu_seconds(pid)
        result = service_load.run(
            service_load.run_level(url, images, concurrency, count, purify, upload)
        )
        cpu = (process_cpu_seconds(pid), time.process_time())
        loop_cpu = loop_cpu_seconds(pid) - loop_before
        elapsed, after = time.perf_counter() - start, server_counters(url)
        delta = {k: after[k] - before.get(k, 0.0) for k in after}
        sent = count + 2 * concurrency  # run_level's warm-up sends 2 per client
        result["server_cpu_ms"] = 1e3 * (cpu[0] - cpu_before[0]) / sent
        result["server_loop_cpu_ms"] = 1e3 * loop_cpu / sent
        result["client_cpu_ms"] = 1e3 * (cpu[1] - cpu_before[1]) / sent
        result["wall_ms"] = 1e3 * elapsed / sent
        result["server_p50_ms"] = server_quantile(delta, 0.5)
        result["server_p99_ms"] = server_quantile(delta, 0.99)
        result["kernel"] = self.readyz.get("neuron_kernel")
        result["cores"] = (
            {"server": sorted(split[0]), "load_generator": sorted(split[1])} if split else "shared"
        )
        result["mean_batch"] = delta["images"] / max(delta["batches"], 1)
        # per stream: the share of each stream's time spent inside the two sessions
        streams = (self.readyz.get("inference") or {}).get("streams", 1)
        result["streams"] = streams
        result["inference_share"] = (delta["purify_s"] + delta["classify_s"]) / elapsed / streams
        result["decode_share"] = delta["decode_s"] / elapsed
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def default(setting: str):
    """The service's default for ``setting`` (what an unset variable means)."""
    from service.config import Settings

    return Settings.model_fields[setting].default


LATENCY_REQUESTS_FACTOR = 5


def layout_label(streams: int, threads: int) -> str:
    return f"{report.LAYOUT_PREFIX}{streams} x threads {threads}"


def service_runs(
    fused_dir: Path,
    unrolled_dir: Path,
    threads: int,
    requests: int,
    sweep: bool,
    rounds: int,
    raw_rate: Callable[[], dict] | None = None,
) -> tuple[list[dict], list[dict]]:
    """``/classify`` (purify) at several concurrencies: the fused graphs with the kernel
    (the service's defaults), without it, today's graphs; then the inference layout
    (streams x threads) and batch size x wait. The service gets what its defaults would
    give it on ``threads`` cores: one stream per core, one ORT thread each. Every server
    starts first and stays up; ``rounds`` times, each runs its levels in turn, and a row is
    the median round, so the machine's drift over the minutes of the run (large on a shared
    host) falls on every setting alike instead of on the ones measured last. ``raw_rate``
    measures the raw pipeline at the start of every round (the servers idle meanwhile):
    returns the rows and those measurements, in round order like each row's ``rounds``.
    The levels the target ratio is taken from (concurrency 32, form and raw body) send
    ``LATENCY_REQUESTS_FACTOR`` times the requests, like the lone request's level."""
    base = {
        "SPIKEGUARD_INFERENCE_STREAMS": str(threads),
        "SPIKEGUARD_INTRA_OP_THREADS": "1",
        "SPIKEGUARD_PROVIDERS": "cpu",
        "SPIKEGUARD_LOG_LEVEL": "error",
    }
    configs = [
        ("native", fused_dir, {}, report.CONCURRENCY),
        (report.RAW_BODY, fused_dir, {}, (1, 32)),
        ("function", fused_dir, {"SPIKEGUARD_MLF_KERNEL": "off"}, (1, 32)),
        ("unrolled", unrolled_dir, {}, (1, 32)),
    ]
    if sweep and threads > 1:  # one batch over every core, or one batch per core
        for streams, intra in ((1, threads), (threads, 1)):
            env = {
                "SPIKEGUARD_INFERENCE_STREAMS": str(streams),
                "SPIKEGUARD_INTRA_OP_THREADS": str(intra),
            }
            configs.append((layout_label(streams, intra), fused_dir, env, (1, 32)))
    if sweep:
        for batch in report.SWEEP_BATCH:
            for wait in report.SWEEP_WAIT_MS:
                env = {
                    "SPIKEGUARD_MAX_BATCH_SIZE": str(batch),
                    "SPIKEGUARD_BATCH_WAIT_MS": str(wait),
                }
                configs.append(("sweep", fused_dir, env, (1, 32)))
    images = service_load.fashion_pngs(64)
    servers: list[tuple[str, dict, tuple, Server]] = []
    try:
        for label, directory, env, levels in configs:
            settings = {**base, **env}
            streams = int(settings["SPIKEGUARD_INFERENCE_STREAMS"])
            split = core_split(streams * int(settings["SPIKEGUARD_INTRA_OP_THREADS"]))
            servers.append((label, env, levels, Server(directory, settings, split)))
        samples: dict[tuple[int, int], list[dict]] = {}
        raw_rounds: list[dict] = []
        for round_ in range(rounds):  # every server once per round: drift hits all alike
            if raw_rate is not None:
                raw_rounds.append(raw_rate())
            for index, (label, _, levels, server) in enumerate(servers):
                upload = "raw" if label == report.RAW_BODY else "multipart"
                for concurrency in levels:
                    # the lone request's p99 is a target: from 5x the requests (at 200 it
                    # is the second-slowest request, one hiccup of the machine); so is the
                    # throughput at 32, which 200 requests measure over a third of a second
                    target = label in ("native", report.RAW_BODY) and concurrency in (1, 32)
                    count = LATENCY_REQUESTS_FACTOR * requests if target else requests
                    row = server.level(images, concurrency, count, True, upload)
                    samples.setdefault((index, concurrency), []).append(row)
            print(f"  service round {round_ + 1} of {rounds} done", file=sys.stderr)
    finally:
        for *_, server in servers:
            server.stop()
    rows = []
    for (index, _), runs in samples.items():
        label, env, _, _ = servers[index]
        result = median_run(runs)
        result.update(
            mode=label,
            max_batch_size=int(env.get("SPIKEGUARD_MAX_BATCH_SIZE", default("max_batch_size"))),
            batch_wait_ms=float(env.get("SPIKEGUARD_BATCH_WAIT_MS", default("batch_wait_ms"))),
        )
        print(
            f"  service {label} batch {result['max_batch_size']} wait "
            f"{result['batch_wait_ms']} c={result['concurrency']}: "
            f"{result['requests_per_s']:.1f} req/s (rounds {result['rounds']}) p50 "
            f"{result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms, mean batch "
            f"{result['mean_batch']:.1f}, inference {result['inference_share']:.0%} of the "
            f"time, kernel {result['kernel']['mode']}",
            file=sys.stderr,
        )
        rows.append(result)
    return rows, raw_rounds


def median_run(runs: list[dict]) -> dict:
    """The run with the median req/s (the lower middle one of an even count), with every
    run's req/s in ``rounds``: its other figures come from that same run."""
    ordered = sorted(runs, key=lambda r: r["requests_per_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["rounds"] = [round(r["requests_per_s"], 1) for r in runs]
    return middle
