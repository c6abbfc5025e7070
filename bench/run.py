"""The benchmark harness: the machine's ceiling, the models' FLOPs, inference and training
throughput and the service end to end, in one run; writes docs/benchmarks.json and
docs/benchmarks.md.

    .venv/bin/python bench/run.py [--model-dir models/fashion-mnist] [--threads N]

Sections, each measured in this same run so that ratios between them are meaningful on a
shared, loaded machine:

* fp32 matmul GFLOP/s (numpy, large square matrices): the machine's ceiling;
* FLOPs per image of each ONNX graph, counted from the shapes of every Conv,
  ConvTranspose, Gemm and MatMul node (a batch-1 run with those tensors exposed as
  outputs), and the graph facts the fast path relies on (first convolution once per image,
  no BatchNormalization left after ORT's optimisations);
* purifier -> classifier images/s by batch size for ONNX Runtime (the service's own
  ``Runtime``) and PyTorch eager on the same checkpoints, interleaved, medians;
* the service end to end (``bench/service_load.py``: a real uvicorn on 127.0.0.1), with
  batching on and off and with and without purification;
* training steps' images/s (classifier, purifier, adversarial) with eager and compiled
  neuron kernels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import service_load  # noqa: E402

from models import cpu_model, usable_cores  # noqa: E402  (bench/models.py)

BATCH_SIZES = (1, 8, 32, 64)
CONCURRENCY = (1, 8, 32, 64)
FLOP_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- ceiling


def matmul_gflops(size: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.random((size, size), np.float32)
    b = rng.random((size, size), np.float32)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats) / 1e9


# --------------------------------------------------------------------------- graphs


def graph_facts(path: Path) -> dict:
    """FLOPs per image of ``path`` (batch 1) and what ORT_ENABLE_ALL leaves of it."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in FLOP_OPS]
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    exposed = {name for n in nodes for name in [*n.input[:2], n.output[0]] if name}
    exposed -= set(weights)
    existing = {o.name for o in model.graph.output}
    for name in sorted(exposed - existing):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    image = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    shapes = {n: v.shape for n, v in zip(names, session.run(names, {"image": image}), strict=True)}

    def shape(name: str) -> tuple[int, ...]:
        return weights[name] if name in weights else tuple(shapes[name])

    flops = 0
    convs = []
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            w, out = shape(n.input[1]), shape(n.output[0])
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
            convs.append({"input": list(shape(n.input[0])), "output": list(out)})
        elif n.op_type == "ConvTranspose":
            # weight [C_in, C_out / group, kH, kW]: each input element feeds C_out/group*k*k
            w, x = shape(n.input[1]), shape(n.input[0])
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        else:  # Gemm, MatMul
            a, out = shape(n.input[0]), shape(n.output[0])
            k = a[0] if n.op_type == "Gemm" and attrs.get("transA", 0) else a[-1]
            macs = int(np.prod(out)) * k
        flops += 2 * macs

    # what the service's optimisation level does to the graph, saved next to a temp copy
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / f"{path.stem}.optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        after = onnx.load(str(optimized))
    count = lambda g, op: sum(1 for x in g.node if op in x.op_type)  # noqa: E731
    original = onnx.load(str(path)).graph
    return {
        "flops_per_image": flops,
        "flop_nodes": len(nodes),
        "first_conv": convs[0] if convs else None,
        "batchnorm_nodes": count(original, "BatchNormalization"),
        "batchnorm_nodes_after_ort": count(after.graph, "BatchNormalization"),
        "conv_nodes": count(original, "Conv"),
        "fused_conv_nodes_after_ort": count(after.graph, "FusedConv"),
        "nodes": len(original.node),
        "nodes_after_ort": len(after.graph.node),
    }


def op_time_shares(path: Path, threads: int, batch: int, runs: int) -> dict[str, float]:
    """Share of ORT's kernel time by operator type (ORT's profiler, ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        image = np.random.default_rng(0).random((batch, 1, 28, 28), np.float32)
        for _ in range(runs):
            session.run(None, {"image": image})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


# --------------------------------------------------------------------------- inference


def torch_pipeline(model_dir: Path, threads: int):
    """The purifier -> classifier in PyTorch eager, on the checkpoints the model directory
    was exported from when they are still on disk (else the repository's default runs)."""
    import torch

    from contract import sha256_file
    from training.checkpoint import load_model

    torch.set_num_threads(threads)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    fallback = {
        "classifier": REPO / "runs/repro/clf-k3/best.safetensors",
        "purifier": REPO / "runs/repro/purifier/best.safetensors",
    }
    models, sources = {}, {}
    for role in ("purifier", "classifier"):
        record = manifest.get("models", {}).get(role, {})
        path = Path(record.get("checkpoint", ""))
        same = path.is_file() and sha256_file(path) == record.get("checkpoint_sha256")
        if not same:
            path = fallback[role]
            # the purifier's file is rewritten while it trains: read a private copy
            copy = Path(tempfile.mkdtemp()) / path.name
            copy.write_bytes(path.read_bytes())
            path = copy
        models[role], _ = load_model(path)
        sources[role] = {"checkpoint": str(path), "same_as_onnx": same}

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        purified, _ = models["purifier"](torch.from_numpy(images))
        return models["classifier"](purified).numpy()

    return run, sources


def inference_throughput(
    model_dir: Path, threads: int, repeats: int, rounds: int
) -> tuple[list[dict], dict]:
    from service.config import Settings
    from service.runtime import Runtime

    runtime = Runtime(
        model_dir, Settings(model_dir=model_dir, intra_op_threads=threads, providers="cpu")
    )
    torch_run, sources = torch_pipeline(model_dir, threads)
    rng = np.random.default_rng(0)
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):  # interleaved: every variant sees the same load in each round
        for batch in BATCH_SIZES:
            images = rng.random((batch, 1, 28, 28), np.float32)
            mask = np.ones(batch, bool)
            variants = {
                "onnxruntime": lambda x=images, m=mask: runtime.run(x, m, m),
                "torch_eager": lambda x=images: torch_run(x),
            }
            for name, step in variants.items():
                seconds = median_seconds(step, repeats)
                samples.setdefault((name, batch), []).append(batch / seconds)
    rows = [
        {
            "engine": name,
            "batch": batch,
            "images_per_s": statistics.median(values),
            "rounds": [round(v, 1) for v in values],
        }
        for (name, batch), values in samples.items()
    ]
    return rows, sources


# --------------------------------------------------------------------------- service


def service_runs(model_dir: Path, threads: int, requests: int) -> list[dict]:
    images = service_load.fashion_pngs(64)
    configs = [
        ("batching", {}, True),
        ("batching", {}, False),
        ("no batching", {"SPIKEGUARD_MAX_BATCH_SIZE": "1"}, True),
    ]
    rows = []
    for label, env, purify in configs:
        env = {
            **env,
            "SPIKEGUARD_INTRA_OP_THREADS": str(threads),
            "SPIKEGUARD_PROVIDERS": "cpu",
            "SPIKEGUARD_LOG_LEVEL": "error",
        }
        process, url = service_load.start_server(str(model_dir), env)
        try:
            for concurrency in CONCURRENCY:
                count = max(requests, 4 * concurrency)
                result = asyncio.run(
                    service_load.run_level(url, images, concurrency, count, purify)
                )
                result.update(mode=label, purify=purify)
                print(
                    f"  service {label} purify={purify} c={concurrency}: "
                    f"{result['requests_per_s']:.1f} req/s p50 {result['p50_ms']:.1f} ms",
                    file=sys.stderr,
                )
                rows.append(result)
        finally:
            process.terminate()
            process.wait(10)
    return rows


# --------------------------------------------------------------------------- training


def training_throughput(batch: int, repeats: int, threads: int) -> list[dict]:
    import torch

    from training.models import create_model
    from training.snn import compile_kernels

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    classifier = create_model("senet18_snn", width=8, in_channels=1, num_classes=10).train()
    purifier = create_model("purifier", width=8, in_channels=1).train()
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    loss = torch.nn.functional.cross_entropy

    def classifier_step() -> None:
        classifier.zero_grad(set_to_none=True)
        loss(classifier(x), y).backward()

    def purifier_step() -> None:
        purifier.zero_grad(set_to_none=True)
        purified, _ = purifier(x)
        torch.nn.functional.mse_loss(purified, x).backward()

    def adversarial_step() -> None:
        # one FGSM example through the classifier, then a training step on it
        x_adv = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(classifier(x_adv), y), x_adv)
        x_adv = (x + 0.1 * grad.sign()).clamp(0, 1)
        classifier.zero_grad(set_to_none=True)
        loss(classifier(x_adv), y).backward()

    steps = {
        "classifier": classifier_step,
        "purifier": purifier_step,
        "adversarial": adversarial_step,
    }
    rows = []
    for compiled in (False, True):
        compile_kernels(compiled)
        try:
            for name, step in steps.items():
                start = time.perf_counter()
                seconds = median_seconds(step, repeats)
                rows.append(
                    {
                        "step": name,
                        "kernels": "compiled" if compiled else "eager",
                        "batch": batch,
                        "images_per_s": batch / seconds,
                        "wall_s": time.perf_counter() - start,
                    }
                )
                print(
                    f"  train {name} {rows[-1]['kernels']}: {rows[-1]['images_per_s']:.0f}/s",
                    file=sys.stderr,
                )
        finally:
            compile_kernels(False)
    return rows


# --------------------------------------------------------------------------- report


def ratios(results: dict) -> list[dict]:
    inference = {(r["engine"], r["batch"]): r["images_per_s"] for r in results["inference"]}
    service = {(r["mode"], r["purify"], r["concurrency"]): r for r in results.get("service", [])}
    flops = sum(g["flops_per_image"] for g in results["graphs"].values())
    best_batch = max(BATCH_SIZES, key=lambda b: inference[("onnxruntime", b)])
    out = []
    if ("batching", True, 32) in service:
        s = service[("batching", True, 32)]
        raw = inference[("onnxruntime", 32)]
        out.append(
            {
                "name": "service /classify c=32 req/s vs raw ORT pipeline batch 32 images/s",
                "value": s["requests_per_s"] / raw,
                "target": ">= 0.85",
                "met": s["requests_per_s"] / raw >= 0.85,
            }
        )
    for batch in BATCH_SIZES:
        value = inference[("onnxruntime", batch)] / inference[("torch_eager", batch)]
        out.append(
            {
                "name": f"ORT pipeline vs PyTorch eager, batch {batch}",
                "value": value,
                "target": ">= 4",
                "met": value >= 4,
            }
        )
    achieved = flops * inference[("onnxruntime", best_batch)] / 1e9
    out.append(
        {
            "name": f"pipeline GFLOP/s (ORT batch {best_batch}: {achieved:.2f}) "
            f"vs matmul GFLOP/s ({results['matmul_gflops']:.1f})",
            "value": achieved / results["matmul_gflops"],
            "target": ">= 0.60",
            "met": achieved / results["matmul_gflops"] >= 0.6,
        }
    )
    if ("batching", True, 1) in service:
        s = service[("batching", True, 1)]
        out.append(
            {
                "name": "p99 / p50 at concurrency 1 (/classify, purify)",
                "value": s["p99_ms"] / s["p50_ms"],
                "target": "<= 1.5",
                "met": s["p99_ms"] / s["p50_ms"] <= 1.5,
            }
        )
    return out


def findings(results: dict) -> list[str]:
    out = []
    timesteps = {}
    for name, g in results["graphs"].items():
        first = g["first_conv"]
        if first:
            once = first["output"][0] == 1
            timesteps[name] = once
            out.append(
                f"- {name}: the first Conv's output at batch 1 is {first['output']}: "
                + (
                    "computed once per image, then expanded over the timesteps (DirectEncoder)."
                    if once
                    else "computed once per timestep."
                )
            )
        out.append(
            f"- {name}: {g['batchnorm_nodes']} BatchNormalization nodes in the exported graph "
            f"({g['batchnorm_nodes_after_ort']} after ORT_ENABLE_ALL): "
            + (
                "batch norm is already folded into the convolutions' weights and biases."
                if g["batchnorm_nodes"] == 0
                else f"ORT's Conv+BN fusion leaves {g['batchnorm_nodes_after_ort']} of them."
            )
        )
    inf = {(r["engine"], r["batch"]): r["images_per_s"] for r in results["inference"]}
    best = max(BATCH_SIZES, key=lambda b: inf[("onnxruntime", b)])
    out.append(
        f"- ORT images/s peak at batch {best} ({inf[('onnxruntime', best)]:.0f}/s); batch 64 "
        f"gives {inf[('onnxruntime', 64)] / inf[('onnxruntime', best)]:.2f}x of that. "
        "The unrolled graph's activations are [T*batch, C, 28, 28]; cache pressure past the "
        "peak is a plausible cause, not measured here."
    )
    out.append(
        f"- Batching choice for this machine: SPIKEGUARD_MAX_BATCH_SIZE={best} (ORT's best "
        "batch above; a larger batch only adds queueing delay), SPIKEGUARD_BATCH_WAIT_MS "
        f"left at 2 ms (one batch of {best} takes {1e3 * best / inf[('onnxruntime', best)]:.0f} "
        "ms to infer). The service's default (32) is "
        "left for machines where larger batches pay; rerun `make bench` there."
    )
    service = results.get("service", [])
    by = {(r["mode"], r["purify"], r["concurrency"]): r for r in service}
    for c in CONCURRENCY:
        on, off = by.get(("batching", True, c)), by.get(("no batching", True, c))
        if on and off:
            out.append(
                f"- concurrency {c}: batching {on['requests_per_s']:.1f} req/s "
                f"(p99 {on['p99_ms']:.0f} ms), max_batch_size 1 {off['requests_per_s']:.1f} "
                f"req/s (p99 {off['p99_ms']:.0f} ms): "
                f"{on['requests_per_s'] / off['requests_per_s']:.2f}x."
            )
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{results['command']}` on {results['date']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} usable cores; load average (1, 5, 15 min) "
        f"{m['load_before']} before and {m['load_after']} after the run; "
        f"{results['threads']} threads for ORT, torch and numpy; run took "
        f"{results['seconds']:.0f} s. The machine is shared: absolute numbers are noisy, the "
        "ratios (all from this one run, variants interleaved, medians) are what to compare.",
        "",
        "## Target ratios",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---|---|",
    ]
    for r in results["ratios"]:
        lines.append(f"| {r['name']} | {r['value']:.2f} | {r['target']} | {r['met']} |")
    lines += [
        "",
        f"## Ceiling: fp32 matmul {results['matmul_size']}x{results['matmul_size']} (numpy)",
        "",
        f"{results['matmul_gflops']:.1f} GFLOP/s",
        "",
        "## Graphs",
        "",
        "| graph | MFLOP/image | Conv nodes | BN nodes (before/after ORT) | FusedConv after ORT "
        "| nodes (before/after ORT) | first Conv output at batch 1 |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for name, g in results["graphs"].items():
        first = g["first_conv"]["output"] if g["first_conv"] else "-"
        lines.append(
            f"| {name} | {g['flops_per_image'] / 1e6:.1f} | {g['conv_nodes']} | "
            f"{g['batchnorm_nodes']}/{g['batchnorm_nodes_after_ort']} | "
            f"{g['fused_conv_nodes_after_ort']} | {g['nodes']}/{g['nodes_after_ort']} | "
            f"{first} |"
        )
    if results.get("op_time_shares"):
        lines += ["", "ORT kernel time by operator (profiler, batch 8, 10 runs):", ""]
        for name, shares in results["op_time_shares"].items():
            top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:6])
            lines.append(f"- {name}: {top}")
    lines += [
        "",
        "## Inference: purifier -> classifier, images/s",
        "",
        f"PyTorch checkpoints: {results['torch_sources']}",
        "",
        "| batch | ONNX Runtime | PyTorch eager | ratio |",
        "|---:|---:|---:|---:|",
    ]
    inf = {(r["engine"], r["batch"]): r["images_per_s"] for r in results["inference"]}
    for b in BATCH_SIZES:
        o, t = inf[("onnxruntime", b)], inf[("torch_eager", b)]
        lines.append(f"| {b} | {o:.1f} | {t:.1f} | {o / t:.2f} |")
    lines += ["", "## Findings (derived from the numbers above)", ""] + findings(results)
    if results.get("service"):
        lines += [
            "",
            "## Service end to end: POST /classify (bench/service_load.py)",
            "",
            "| mode | purify | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms "
            "| errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in results["service"]:
            lines.append(
                f"| {r['mode']} | {r['purify']} | {r['concurrency']} | {r['requests']} | "
                f"{r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r.get('p95_ms', 0):.1f} | "
                f"{r['p99_ms']:.1f} | {r['errors'] or '-'} |"
            )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/fashion-mnist")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved inference rounds")
    parser.add_argument("--requests", type=int, default=200, help="requests per service level")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=["service", "training"])
    parser.add_argument("--out", default="docs", help="directory for benchmarks.json/.md")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the .md from a .json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["ratios"] = ratios(results)
        (REPO / args.out / "benchmarks.md").write_text(markdown(results))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    model_dir = (REPO / args.model_dir).resolve()
    started = time.perf_counter()
    results: dict = {
        "command": shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": args.threads,
        "machine": {
            "cpu": cpu_model(),
            "cores": usable_cores(),
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "matmul_size": args.matmul_size,
    }
    print("matmul...", file=sys.stderr)
    results["matmul_gflops"] = matmul_gflops(args.matmul_size, args.repeats)
    print("graphs...", file=sys.stderr)
    results["graphs"] = {
        role: graph_facts(model_dir / f"{role}.onnx") for role in ("purifier", "classifier")
    }
    results["op_time_shares"] = {
        role: op_time_shares(model_dir / f"{role}.onnx", args.threads, 8, 10)
        for role in ("purifier", "classifier")
    }
    print("inference...", file=sys.stderr)
    results["inference"], results["torch_sources"] = inference_throughput(
        model_dir, args.threads, args.repeats, args.rounds
    )
    if "service" not in args.skip:
        print("service...", file=sys.stderr)
        results["service"] = service_runs(model_dir, args.threads, args.requests)
    if "training" not in args.skip:
        print("training...", file=sys.stderr)
        results["training"] = training_throughput(args.train_batch, args.repeats, args.threads)
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.perf_counter() - started
    results["ratios"] = ratios(results)
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "benchmarks.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
