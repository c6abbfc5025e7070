"""docs/benchmarks.md from the results of ``bench/run.py``: the issue's target ratios, the
service settings the sweep supports, and every table the ratios come from."""

from __future__ import annotations

import statistics

BATCH_SIZES = (1, 8, 32, 64)
CONCURRENCY = (1, 8, 32, 64)
SWEEP_BATCH = (8, 16, 32)
SWEEP_WAIT_MS = (0.0, 2.0, 5.0)
VARIANT_NAMES = {
    "unrolled": "today's graphs (unrolled neurons)",
    "function": "one node per neuron, function body (no kernel library)",
    "native": "one node per neuron, native kernel",
    "native_streams": "native kernel, one batch per thread at once (the service's default)",
    "native_1thread": "native kernel, one ORT thread alone (one core's rate)",
    "torch_eager": "PyTorch eager",
}
RAW_ENGINES = ("native", "native_streams")  # the raw pipeline the service is held against


def _inference(results: dict) -> dict[tuple[str, int], float]:
    return {(r["engine"], r["batch"]): r["images_per_s"] for r in results["inference"]}


# the service serving the native graphs, each image sent as the request body itself
# (Content-Type image/png) instead of a multipart form
RAW_BODY = "native, raw body"
LAYOUT_PREFIX = "streams "  # the service's rows with an inference layout set


def _service(results: dict, mode: str = "native") -> dict[int, dict]:
    return {r["concurrency"]: r for r in results.get("service", []) if r["mode"] == mode}


def raw_best(results: dict) -> float:
    """The native pipeline's best images/s over the batch sizes, run either way: one batch
    over every thread, or one batch per thread at once."""
    return _raw_best(results)[0]


def _raw_best(results: dict) -> tuple[float, str]:
    """(best images/s, how: engine and batch)."""
    inf = _inference(results)
    value, engine, batch = max(
        (inf[(e, b)], e, b) for e in RAW_ENGINES for b in BATCH_SIZES if (e, b) in inf
    )
    return value, f"native, {_engine_batch(f'{engine} {batch}')}"


def service_ratio(results: dict, row: dict, form: str) -> tuple[float, str]:
    """(ratio, row name) of ``/classify`` at concurrency 32 against the raw pipeline's best.
    With the raw pipeline measured at the start of every service round
    (``service_raw_rounds``), the ratio is the median of the rounds' own ratios: each
    round's req/s over the raw rate taken minutes before it, so a drift of the machine
    between the inference section and the service section does not decide it. The ratio
    against the inference section's best is given beside it."""
    raw_best, how = _raw_best(results)
    against_section = row["requests_per_s"] / raw_best
    raw_rounds = results.get("service_raw_rounds") or []
    rounds = row.get("rounds") or []
    if not raw_rounds or len(raw_rounds) != len(rounds):
        name = (
            f"/classify req/s at concurrency 32 ({form}) vs raw pipeline best images/s "
            f"({how}: {raw_best:.0f}/s)"
        )
        return against_section, name
    paired = [r / raw["images_per_s"] for r, raw in zip(rounds, raw_rounds, strict=True)]
    detail = ", ".join(
        f"{r:.0f}/{raw['images_per_s']:.0f}" for r, raw in zip(rounds, raw_rounds, strict=True)
    )
    name = (
        f"/classify req/s at concurrency 32 ({form}) vs raw pipeline best images/s, "
        f"measured beside it in each service round (median of the rounds' ratios; "
        f"req/s / images/s per round: {detail}; against the inference section's best, "
        f"{how}: {raw_best:.0f}/s, {against_section:.2f})"
    )
    return statistics.median(paired), name


def _row(name: str, value: float | None, target: str, met: bool | None, command: str) -> dict:
    return {"name": name, "value": value, "target": target, "met": met, "command": command}


def ratios(results: dict) -> list[dict]:
    """The issue's target table, each from this one run."""
    inf = _inference(results)
    cmd = results["command"]
    out = []
    value = inf[("native", 32)] / inf[("unrolled", 32)]
    out.append(
        _row(
            "pipeline images/s, native kernel vs today's graphs, batch 32",
            value,
            ">= 3.0",
            value >= 3.0,
            cmd,
        )
    )
    value = inf[("function", 8)] / inf[("unrolled", 8)]
    out.append(
        _row(
            "pipeline images/s, fallback function vs today's graphs, batch 8",
            value,
            ">= 1.25",
            value >= 1.25,
            cmd,
        )
    )
    flops = sum(g["flops_per_image"] for g in results["graphs"].values())
    best = max(results["matmul_gflops"].values())
    achieved = flops * inf[("native", 32)] / 1e9
    out.append(
        _row(
            f"pipeline GFLOP/s (native, batch 32: {achieved:.1f}) vs best matmul "
            f"GFLOP/s ({best:.1f})",
            achieved / best,
            ">= 0.25",
            achieved / best >= 0.25,
            cmd,
        )
    )
    service = _service(results)
    for mode, form in (("native", "multipart form"), (RAW_BODY, "image as the body")):
        measured = _service(results, mode)
        if 32 in measured:
            value, name = service_ratio(results, measured[32], form)
            out.append(_row(name, value, ">= 0.85", value >= 0.85, cmd))
    if 1 in service:
        value = service[1]["p99_ms"] / service[1]["p50_ms"]
        out.append(
            _row("p99 / p50 latency at concurrency 1 (native)", value, "<= 1.5", value <= 1.5, cmd)
        )
    spikes = results["spikes"]
    differ = spikes["differ_from_native"]
    identical = all(v == 0 for v in differ.values())
    compared = ", ".join(f"{k} {v}" for k, v in differ.items())
    missing = "" if "pytorch" in differ else "; PyTorch not compared: no weights"
    out.append(
        _row(
            f"spike counts on {spikes['images']} test images: images differing from "
            f"the native kernel ({compared}{missing})",
            None,
            "identical",
            identical and "pytorch" in differ,
            cmd,
        )
    )
    return out


def run_defaults(results: dict) -> tuple[int, float]:
    """(max batch size, wait ms) the service ran with by default in this run: what its
    "native" rows (no setting overridden) recorded."""
    for r in results.get("service", []):
        if r["mode"] == "native":
            return r["max_batch_size"], r["batch_wait_ms"]
    return 32, 0.0


def recommended_settings(results: dict) -> list[str]:
    """What the sweep says about batch size, wait and threads, and the settings to use.
    Throughput at concurrency 32 first: a setting must beat every measurement of the
    defaults by more than the spread between those measurements (at least 10 %) to count,
    a smaller gap is within the run's own noise. Among the settings that tie on throughput,
    the lone request's p50 (concurrency 1) decides, by the same margin."""
    service = results.get("service", [])
    by = {
        (r["mode"], r["max_batch_size"], r["batch_wait_ms"], r["concurrency"]): r for r in service
    }
    lines = []
    default = run_defaults(results)
    loaded = by.get(("native", *default, 32))
    if loaded and "inference_share" in loaded:
        bound = "inference" if loaded["inference_share"] >= 0.6 else "the HTTP path"
        pinned = isinstance(loaded.get("cores"), dict)
        if "server_cpu_ms" in loaded and pinned:
            cores = loaded["cores"]
            lines.append(
                f"- At concurrency 32 the service ran pinned to core(s) {cores['server']} "
                f"(HTTP, decode and inference together) and the load generator to "
                f"{cores['load_generator']}, so the service had the same compute as the raw "
                f"pipeline's {results['threads']} thread(s) and did not pay for its clients. "
                f"It used {loaded['server_cpu_ms']:.1f} CPU ms per request "
                f"({loaded['server_cpu_ms'] / loaded['wall_ms']:.0%} of its core(s)' wall "
                f"time) and the load generator {loaded['client_cpu_ms']:.1f}."
            )
        elif "server_cpu_ms" in loaded:
            cores = len(results["machine"].get("affinity") or [0]) or 1
            used = (loaded["server_cpu_ms"] + loaded["client_cpu_ms"]) / loaded["wall_ms"]
            share = loaded["client_cpu_ms"] / (loaded["server_cpu_ms"] + loaded["client_cpu_ms"])
            alone = cores * 1e3 / loaded["server_cpu_ms"]  # req/s on every core, CPU-bound
            lines.append(
                f"- At concurrency 32 the service and the load generator shared this run's "
                f"{cores} core(s) (no core was left to pin the load generator apart): the "
                f"service used {loaded['server_cpu_ms']:.1f} CPU ms per request and the load "
                f"generator {loaded['client_cpu_ms']:.1f} ({share:.0%} of the two), together "
                f"{used / cores:.0%} of the cores' wall time. An upper bound from the CPU "
                f"accounting alone (not a measurement): {alone:.0f} req/s if the service had "
                f"all {cores} core(s) to itself, {alone / raw_best(results):.2f}x the raw "
                "pipeline's best images/s."
            )
        if "server_p99_ms" in loaded:
            lines.append(
                f"- Latency at concurrency 32: the load generator saw p50 "
                f"{loaded['p50_ms']:.0f} ms and p99 {loaded['p99_ms']:.0f} ms; the service's "
                f"own histogram puts its p50 at <= {loaded['server_p50_ms']:g} ms and its p99 "
                f"at <= {loaded['server_p99_ms']:g} ms. What the service's clock does not see "
                "(connection and header handling before the app, and the load generator "
                "itself) makes the rest of the tail."
            )
        lines.append(
            f"- At concurrency 32 the service spent {loaded['inference_share']:.0%} of the wall "
            f"time in inference and its batches held {loaded['mean_batch']:.1f} images on "
            f"average: {bound} bounds throughput here"
            + (
                " (upload parsing, decoding and JSON on the event loop"
                + ("" if pinned else ", and on this machine the load generator on the same core")
                + "), so requests reach the batcher one or two at a time and batch size and "
                "wait barely bind."
                if bound != "inference"
                else "."
            )
        )
    sweep = [
        (b, w, by.get(("sweep", b, w, 32)), by.get(("sweep", b, w, 1)))
        for b in SWEEP_BATCH
        for w in SWEEP_WAIT_MS
    ]
    sweep = [row for row in sweep if row[2] and row[3]]
    if not sweep:
        return lines + ["- No batch-size / wait sweep in this run (`--skip sweep`)."]
    lines.append(
        "- Sweep (req/s at concurrency 32; p50 / p99 ms alone): "
        + "; ".join(
            f"batch {b} wait {w:g}: {lo['requests_per_s']:.0f}; {al['p50_ms']:.1f} / "
            f"{al['p99_ms']:.1f}"
            for b, w, lo, al in sweep
        )
        + "."
    )
    # the defaults are measured twice (the "native" server and the sweep's): their spread
    # is this run's noise, and a setting must beat the better of the two by more to count
    repeats = [r[2]["requests_per_s"] for r in sweep if (r[0], r[1]) == default]
    if loaded:
        repeats.append(loaded["requests_per_s"])
    best = max(sweep, key=lambda r: r[2]["requests_per_s"])
    # the margin a setting must beat them by: 10 %, or their own spread if that is wider
    margin = max(1.1, max(repeats) / min(repeats)) if repeats else 1.1
    tied = [r for r in sweep if r[2]["requests_per_s"] * margin >= best[2]["requests_per_s"]]
    lone = [r[3]["p50_ms"] for r in sweep if (r[0], r[1]) == default]
    quickest = min(tied, key=lambda r: r[3]["p50_ms"])
    # of the settings that beat the defaults' lone request, the one that changes least. A
    # lone request is a batch of one whatever the cap, so only a different wait can change
    # its latency: between settings with the defaults' wait a gap there is the run's drift
    faster = [
        r for r in tied if lone and r[1] != default[1] and r[3]["p50_ms"] * margin < min(lone)
    ]
    same_cap = [r for r in faster if r[0] == default[0]]
    if same_cap:
        quickest = min(same_cap, key=lambda r: r[3]["p50_ms"])
    raw = (
        "The raw pipeline does "
        + ", ".join(f"{_inference(results)[('native', b)]:.0f}" for b in BATCH_SIZES)
        + f" images/s at batch {', '.join(map(str, BATCH_SIZES))}"
    )
    if repeats and best[2]["requests_per_s"] > margin * max(repeats):
        lines.append(
            f"- Settings: SPIKEGUARD_MAX_BATCH_SIZE={best[0]}, SPIKEGUARD_BATCH_WAIT_MS="
            f"{best[1]:g} ({best[2]['requests_per_s']:.0f} req/s at concurrency 32), more than "
            f"{margin - 1:.0%} (the defaults' own spread, at least 10 %) above every "
            "measurement of the defaults in this run "
            f"({', '.join(f'{v:.0f}' for v in sorted(repeats))} req/s)."
        )
    elif faster:
        lines.append(
            f"- Settings: SPIKEGUARD_MAX_BATCH_SIZE={quickest[0]}, SPIKEGUARD_BATCH_WAIT_MS="
            f"{quickest[1]:g} rather than this run's defaults ({default[0]}, "
            f"{default[1]:g} ms). At concurrency 32 no setting beats the defaults by more "
            f"than the run's noise ({margin - 1:.0%}, at least 10 %; the defaults measured "
            f"{' and '.join(f'{v:.0f}' for v in sorted(repeats))} req/s), so throughput "
            f"does not decide; a lone request does: p50 {quickest[3]['p50_ms']:.1f} ms "
            f"against {min(lone):.1f} ms. A lone request waits the whole wait for company that "
            f"does not come. {raw}: on this machine a bigger batch buys almost nothing per "
            "image, and under load the queue fills a batch while the previous one runs, "
            "without any wait. (Of the settings that answer faster, the one that changes "
            "least.)"
        )
    else:
        lines.append(
            f"- Settings: keep SPIKEGUARD_MAX_BATCH_SIZE={default[0]} and "
            f"SPIKEGUARD_BATCH_WAIT_MS={default[1]:g}. Two servers with these settings "
            f"measured {' and '.join(f'{v:.0f}' for v in sorted(repeats))} req/s at "
            f"concurrency 32 in this run, so differences of that size are noise; the best "
            f"sweep setting (batch {best[0]}, wait {best[1]:g} ms, "
            f"{best[2]['requests_per_s']:.0f} req/s) does not beat the better of them by "
            f"more than that spread ({margin - 1:.0%}, at least 10 %), and none of the "
            "settings that tie with it answers a lone request sooner by more than that with "
            "a shorter wait (a lone request is a batch of one whatever the cap, so only the "
            f"wait can change its latency). {raw}: "
            "a cap of 32 loses nothing per image when a burst fills it, and no batch waits "
            "to fill (it runs with what arrived within the wait)."
        )
    layouts = sorted(
        (r for r in service if r["mode"].startswith(LAYOUT_PREFIX)), key=lambda r: r["mode"]
    )
    if layouts:
        lines.append(
            "- Inference layout (SPIKEGUARD_INFERENCE_STREAMS batches at once x "
            "SPIKEGUARD_INTRA_OP_THREADS ORT threads each; the event loop decodes and serves "
            "HTTP on what is left): "
            + "; ".join(
                f"{r['mode']} c={r['concurrency']}: {r['requests_per_s']:.0f} req/s, p50 "
                f"{r['p50_ms']:.1f} ms, {r['server_cpu_ms']:.1f} CPU ms/request"
                for r in layouts
            )
            + "."
        )
    if not layouts:
        lines.append(
            f"- Inference layout: {results['threads']} thread(s) in this run, so one batch "
            "over every core and one batch per core are the same; `make bench` on two free "
            "cores adds that comparison."
        )
    return lines


def _rounds(row: dict) -> str:
    rounds = row.get("rounds")
    return f" ({', '.join(f'{v:.0f}' for v in rounds)})" if rounds and len(rounds) > 1 else ""


def _bound(value: float | None) -> str:
    return "-" if value is None else f"<= {value:g}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _machine(results: dict) -> str:
    m = results["machine"]
    note = f" {m['note']}" if m.get("note") else ""
    return (
        f"Machine: {m['cpu']}; this run on cores {m.get('affinity', '?')} ({m['cores']} usable) "
        f"with {results['threads']} thread(s) for ORT, torch and numpy.{note} Load average "
        f"(1, 5, 15 min) {m['load_before']} before and {m['load_after']} after; the run took "
        f"{results['seconds']:.0f} s. Absolute numbers are noisy on a shared machine; the "
        "ratios (one run, variants interleaved, medians) are what to compare."
    )


def markdown(results: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{results['command']}` on {results['date']}.",
        "",
        _machine(results),
        "",
        f"Model: {results['source']}. Kernel library: `{results['kernel']['library']}` "
        f"({results['kernel']['isa']}). Neurons fused into one node each: "
        f"{results['fused_neurons']}.",
        "",
        "CUDA: unmeasured (no GPU here); `bench/gpu_check.py` measures it on a machine with one.",
        "",
        "## Target ratios",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---|---|",
    ]
    for r in ratios(results):
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {r['target']} | {r['met']} |")
    mm = results["matmul_gflops"]
    lines += [
        "",
        f"## Ceiling: fp32 matmul {results['matmul_size']}^3",
        "",
        f"numpy {mm['numpy']:.1f} GFLOP/s, torch {mm['torch']:.1f} GFLOP/s (best: "
        f"{max(mm.values()):.1f}).",
        "",
        "## Graphs",
        "",
        "| graph | MFLOP/image | nodes (before/after ORT) | fused: nodes (before/after ORT) |",
        "|---|---:|---|---|",
    ]
    for name, g in results["graphs"].items():
        f = g["fused"]
        lines.append(
            f"| {name} | {g['flops_per_image'] / 1e6:.1f} | {g['nodes']}/{g['nodes_after_ort']} "
            f"| {f['nodes']}/{f['nodes_after_ort']} |"
        )
    lines += ["", "ORT kernel time by operator (profiler, batch 8, 10 runs):", ""]
    for name, shares in results["op_time_shares"].items():
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:6])
        lines.append(f"- {name}: {top}")
    lines += _inference_table(results)
    spikes = results["spikes"]
    lines += [
        "",
        f"Spike counts on {spikes['images']} Fashion-MNIST test images (purifier, then the "
        f"classifier on its output): images differing from the native kernel: "
        f"{spikes['differ_from_native']}; all outputs bit-identical: "
        f"{spikes['identical_outputs']}; mean spikes per image {spikes['mean_spikes']}.",
    ]
    if "pytorch" in spikes:
        torch_, per_image = spikes["pytorch"], sum(spikes["mean_spikes"].values())
        lines += [
            "",
            f"PyTorch against the native kernel: {torch_['images']} of {spikes['images']} "
            f"images differ, by at most {torch_['largest_count_difference']} spikes in one "
            f"network's count for an image (of about {per_image:,.0f} per image in both); the "
            f"predicted labels agree on {torch_['labels_agree']}. PyTorch's convolutions sum "
            "in another order than ONNX Runtime's, so a membrane potential within rounding of "
            "a threshold can fire in one and not the other (and the flip travels on through "
            "the later layers and time steps); the kernel's "
            "own arithmetic is tested against the PyTorch neuron on the same inputs (tests/"
            "kernel), values exactly at a threshold included.",
        ]
    lines += _service_table(results)
    lines += ["", "## Service settings", ""] + recommended_settings(results)
    if results.get("training"):
        lines += [
            "",
            "## Training steps, images/s (width 8, train mode, forward + backward)",
            "",
            "| step | kernels | batch | images/s |",
            "|---|---|---:|---:|",
        ]
        for r in results["training"]:
            lines.append(
                f"| {r['step']} | {r['kernels']} | {r['batch']} | {r['images_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _inference_table(results: dict) -> list[str]:
    inf = _inference(results)
    engines = [e for e in VARIANT_NAMES if (e, 1) in inf]
    # what the other threads add to one: the threads' count on as many real cores, about
    # 1.2 for two where they are hyperthreads of one core
    scaling = "native_streams" in engines and "native_1thread" in engines
    extra = " | threads together / one thread alone" if scaling else ""
    lines = [
        "",
        "## Inference: purifier -> classifier, images/s",
        "",
        "| batch | "
        + " | ".join(VARIANT_NAMES[e] for e in engines)
        + f" | native / today{extra} |",
        "|---:|" + "---:|" * (len(engines) + 1 + scaling),
    ]
    for b in BATCH_SIZES:
        cells = " | ".join(f"{inf[(e, b)]:.1f}" for e in engines)
        cells += f" | {inf[('native', b)] / inf[('unrolled', b)]:.2f}"
        if scaling:
            cells += f" | {inf[('native_streams', b)] / inf[('native_1thread', b)]:.2f}"
        lines.append(f"| {b} | {cells} |")
    return lines


def _service_table(results: dict) -> list[str]:
    if not results.get("service"):
        return []
    lines = [
        "",
        "## Service end to end: POST /classify with purification (bench/service_load.py)",
        "",
        "Per level (warm-up included): from the service's /metrics the mean batch size and "
        "the share of each inference stream's wall time spent in the two sessions; from the "
        "kernel the CPU milliseconds per request of the service process (and, in brackets, "
        "of its event-loop thread: HTTP, routing, small decodes, batching; the rest is "
        "inference) and of the load generator, beside the wall milliseconds per request "
        "(their sum below the wall "
        "time: the rest of the core went to other processes); and the service's own "
        "p50 / p99 of /classify (bounds of its duration histogram's buckets: the time from "
        "its middleware to the response), next to the load generator's p50 / p99. Every "
        "server ran its levels once per round, all servers in turn; a row is the round with "
        "the median req/s (every round's req/s in brackets).",
        "",
        "| graphs | batch | wait ms | concurrency | requests | req/s | p50 ms | p99 ms "
        "| service p50 / p99 ms | mean batch | inference share "
        "| CPU ms/req service / client / wall | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in results["service"]:
        loop = f" ({r['server_loop_cpu_ms']:.1f})" if "server_loop_cpu_ms" in r else ""
        cpu = (
            f"{r['server_cpu_ms']:.1f}{loop} / {r['client_cpu_ms']:.1f} / {r['wall_ms']:.1f}"
            if "server_cpu_ms" in r
            else "-"
        )
        lines.append(
            f"| {r['mode']} | {r['max_batch_size']} | {r['batch_wait_ms']:g} | "
            f"{r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f}{_rounds(r)} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{_bound(r.get('server_p50_ms'))} / {_bound(r.get('server_p99_ms'))} | "
            f"{r.get('mean_batch', 0):.1f} | "
            f"{r.get('inference_share', 0):.0%} | {cpu} | {r['errors'] or '-'} |"
        )
    raw_rounds = results.get("service_raw_rounds") or []
    if raw_rounds:
        each = "; ".join(
            f"round {i}: {raw['images_per_s']:.0f} images/s ({_engine_batch(raw['engine_batch'])})"
            for i, raw in enumerate(raw_rounds, 1)
        )
        lines += [
            "",
            "The raw pipeline's best at the start of each round (the servers idle "
            f"meanwhile), which the target ratios divide by round by round: {each}.",
        ]
    return lines


def _engine_batch(key: str) -> str:
    """``"native_streams 8"`` -> ``"one batch per thread, batch 8"``."""
    engine, batch = key.rsplit(" ", 1)
    how = "one batch per thread" if engine == "native_streams" else "one batch on all threads"
    return f"{how}, batch {batch}"
