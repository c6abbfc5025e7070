"""The benchmark harness: the machine's ceiling, the graphs, inference in three graph forms,
the service end to end and training steps, in one run; writes docs/benchmarks.json and
docs/benchmarks.md (rendered by bench/report.py).

    .venv/bin/python bench/run.py [--model-dir models/fashion-mnist] [--threads N]
        [--checkpoints DIR] [--machine-note TEXT] [--skip service sweep training]

Every section is measured in this same run so that ratios between them mean something on a
shared, loaded machine; variants are interleaved round by round and medians reported:

* the ceiling: fp32 matmul GFLOP/s, the best of numpy and torch (large square matrices);
* the graphs (``bench/variants.py``): today's unrolled export, the same graphs with one
  ``ai.spikeguard::MLF`` node per neuron run through the model-local function
  (``function``) and through the native kernel library (``native``); FLOPs per image
  counted from the shapes of every Conv, ConvTranspose, Gemm and MatMul node; where ORT
  spends its time (profiler) before and after;
* purifier -> classifier images/s by batch size for each form, and PyTorch eager when the
  weights are known; the native form also as the service runs it by default, one batch per
  thread on every thread at once (``native_streams``) and on one thread alone
  (``native_1thread``: what the other threads add); spike counts of every form (and
  PyTorch) on 1,000 test images;
* the service end to end (``bench/service_load.py``: a real uvicorn on 127.0.0.1) serving
  the fused graphs with and without the kernel and today's graphs, and a sweep of batch
  size and batch wait that the report turns into the recommended settings;
* training steps' images/s with eager and compiled neuron kernels.

It needs nothing but a clone: the bundled model (see ``bench/variants.py`` for where the
graphs come from when the bundle ships weights), the Debian Fashion-MNIST package and a
built kernel (``make kernel``).
"""

from __future__ import annotations

import argparse
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

import report  # noqa: E402  (bench/report.py)
import service_load  # noqa: E402
import variants  # noqa: E402
from graph_facts import graph_facts, op_time_shares  # noqa: E402
from service_bench import service_runs  # noqa: E402

from models import cpu_model, usable_cores  # noqa: E402  (bench/models.py)

BATCH_SIZES = report.BATCH_SIZES
CONCURRENCY = report.CONCURRENCY
SPIKE_IMAGES = 1000


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- ceiling


def matmul_gflops(size: int, repeats: int, threads: int) -> dict[str, float]:
    """fp32 ``size``^3 matmul GFLOP/s with numpy and with torch (same matrices)."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.random((size, size), np.float32)
    b = rng.random((size, size), np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flop = 2 * size**3
    return {
        "numpy": flop / median_seconds(lambda: a @ b, repeats) / 1e9,
        "torch": flop / median_seconds(lambda: ta @ tb, repeats) / 1e9,
    }


# --------------------------------------------------------------------------- inference


def torch_pipeline(source: variants.Source, threads: int):
    """purifier -> classifier in PyTorch eager on the weights the graphs came from."""
    import torch

    from training.checkpoint import load_model

    torch.set_num_threads(threads)
    models = {r: load_model(source.checkpoints[r])[0].eval() for r in variants.ROLES}

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        purified, _ = models["purifier"](torch.from_numpy(images))
        return models["classifier"](purified).numpy()

    return run


class Streams:
    """``streams`` batches at once through one-thread sessions, one per thread (shared
    sessions, as the service's inference streams run them): a call runs the batch on every
    stream and returns when all are done, so it infers ``streams`` times the batch."""

    def __init__(self, source: variants.Source, streams: int):
        from concurrent.futures import ThreadPoolExecutor

        self.streams = streams
        self.pipeline = variants.Pipeline(source, "native", 1)
        self.pool = ThreadPoolExecutor(max_workers=streams)

    def __call__(self, images: np.ndarray) -> list:
        return list(self.pool.map(self.pipeline, [images] * self.streams))


Engines = dict[str, tuple[Callable, int]]  # name -> (run, batches one call infers)


def engine_rates(engines: Engines, test_set: np.ndarray, repeats: int) -> dict:
    """images/s of every engine at every batch size: one median of ``repeats`` calls each,
    on the first ``batch`` of ``test_set``."""
    rates = {}
    for batch in BATCH_SIZES:
        images = test_set[:batch].copy()
        for name, (run, per_call) in engines.items():
            seconds = median_seconds(lambda run=run, x=images: run(x), repeats)
            rates[name, batch] = per_call * batch / seconds
    return rates


def inference_throughput(
    source: variants.Source, threads: int, repeats: int, rounds: int
) -> list[dict]:
    """images/s by engine and batch size, engines interleaved within every round."""
    engines: Engines = {v: (variants.Pipeline(source, v, threads), 1) for v in variants.VARIANTS}
    if threads > 1:
        engines["native_streams"] = (Streams(source, threads), threads)
        # one core's rate: beside native_streams it shows what the other threads add
        engines["native_1thread"] = (variants.Pipeline(source, "native", 1), 1)
    if source.checkpoints is not None:
        engines["torch_eager"] = (torch_pipeline(source, threads), 1)
    # the Fashion-MNIST test images the service is sent (bench/service_load.py), so that the
    # raw pipeline and the service fire the same spikes
    test_set = test_images(max(BATCH_SIZES))
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for key, rate in engine_rates(engines, test_set, repeats).items():
            samples.setdefault(key, []).append(rate)
        print(f"  round done: {len(samples)} measurements", file=sys.stderr)
    return [
        {
            "engine": name,
            "batch": batch,
            "images_per_s": statistics.median(values),
            "rounds": [round(v, 1) for v in values],
        }
        for (name, batch), values in samples.items()
    ]


class RawRate:
    """The raw pipeline's best images/s right now (the engines and batch sizes of
    ``report.RAW_ENGINES`` x ``BATCH_SIZES``, one median of ``repeats`` calls each): taken
    in every service round, between the servers' levels, so that the service and the raw
    pipeline it is held against are measured minutes apart at most, under the same drift."""

    def __init__(self, source: variants.Source, threads: int, repeats: int):
        self.engines: Engines = {"native": (variants.Pipeline(source, "native", threads), 1)}
        if threads > 1:
            self.engines["native_streams"] = (Streams(source, threads), threads)
        self.images = test_images(max(BATCH_SIZES))
        self.repeats = repeats

    def __call__(self) -> dict:
        rates = {
            f"{name} {batch}": rate
            for (name, batch), rate in engine_rates(self.engines, self.images, self.repeats).items()
        }
        best = max(rates, key=rates.get)
        return {"images_per_s": rates[best], "engine_batch": best, "rates": rates}


# --------------------------------------------------------------------------- training


def training_throughput(batch: int, repeats: int, threads: int) -> list[dict]:
    import torch

    from training.models import create_model
    from training.snn import use_kernels

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
        for model in (classifier, purifier):
            use_kernels(model, "compiled" if compiled else "eager")
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
    return rows


def test_images(count: int) -> np.ndarray:
    import gzip

    with gzip.open(service_load.FASHION_TEST_IMAGES) as f:
        data = f.read()
    pixels = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
    return (pixels.astype(np.float32) / 255.0).copy()


def measure(args: argparse.Namespace, results: dict, work: Path) -> None:
    import mlf_kernel

    model_dir = (REPO / args.model_dir).resolve()
    print("matmul...", file=sys.stderr)
    results["matmul_gflops"] = matmul_gflops(args.matmul_size, args.repeats, args.threads)
    print("graphs...", file=sys.stderr)
    source = variants.prepare(model_dir, work, args.checkpoints and Path(args.checkpoints))
    results["source"] = source.description
    results["kernel"] = {"library": str(mlf_kernel.library_path()), "isa": mlf_kernel.isa()}
    results["fused_neurons"] = source.fused_neurons
    results["graphs"] = {
        role: graph_facts(source.unrolled[role]) | {"fused": graph_facts(source.fused[role])}
        for role in variants.ROLES
    }
    results["op_time_shares"] = {
        f"{role} {variant}": op_time_shares(
            source.graph(variant, role), args.threads, 8, 10, native=variant == "native"
        )
        for role in variants.ROLES
        for variant in ("unrolled", "native")
    }
    print("spike counts...", file=sys.stderr)
    results["spikes"] = variants.spike_agreement(source, test_images(SPIKE_IMAGES), args.threads)
    print("inference...", file=sys.stderr)
    results["inference"] = inference_throughput(source, args.threads, args.repeats, args.rounds)
    if "service" not in args.skip:
        print("service...", file=sys.stderr)
        fused_dir = variants.fused_model_dir(model_dir, source, work / "fused-model")
        unrolled_dir = model_dir
        if source.unrolled["classifier"].parent != model_dir:
            unrolled_dir = variants.fused_model_dir(
                model_dir,
                variants.Source("", source.unrolled, source.unrolled),
                work / "unrolled-model",
            )
        results["service"], results["service_raw_rounds"] = service_runs(
            fused_dir,
            unrolled_dir,
            args.threads,
            args.requests,
            "sweep" not in args.skip,
            args.rounds,
            RawRate(source, args.threads, args.repeats),
        )
    if "training" not in args.skip:
        print("training...", file=sys.stderr)
        results["training"] = training_throughput(args.train_batch, args.repeats, args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/fashion-mnist")
    parser.add_argument("--checkpoints", help="weights to use when the bundle has neither")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (inference and service)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per service level")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=["service", "sweep", "training"])
    parser.add_argument("--machine-note", default="", help="what else the machine was doing")
    parser.add_argument("--out", default="docs", help="directory for benchmarks.json/.md")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the .md from a .json")
    args = parser.parse_args(argv)
    out = REPO / args.out
    if args.render:
        results = json.loads(Path(args.render).read_text())
        (out / "benchmarks.md").write_text(report.markdown(results))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    results: dict = {
        "command": shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": args.threads,
        "machine": {
            "cpu": cpu_model(),
            "cores": usable_cores(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "note": args.machine_note,
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "matmul_size": args.matmul_size,
    }
    with tempfile.TemporaryDirectory(prefix="spikeguard-bench-") as tmp:
        measure(args, results, Path(tmp))
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "benchmarks.md").write_text(report.markdown(results))
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
