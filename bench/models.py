"""CPU throughput of the spiking classifier and purifier at narrow widths.

For each model and width: images/s of a training-mode forward pass (autograd recording, as
in a training step or a white-box attack) and of forward + backward, with the eager neuron
kernels and with compiled ones (``use_kernels``); and images/s of an inference forward pass (eval
mode, no autograd: the path the exported ONNX graph follows, which the compiled kernels
do not touch). Prints a Markdown table with the machine and the command.

    .venv/bin/python bench/models.py [--widths 8 16] [--batch-size 64] [--threads N]

On a machine shared with other busy processes, fewer threads than cores can be faster:
idle OpenMP workers spin at every barrier while waiting for a descheduled one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from training.models import create_model, is_classifier
from training.snn import use_kernels

MODELS = ("senet18_snn", "purifier")


@dataclass
class Row:
    model: str
    width: int
    params: int
    kernels: str
    forward: float
    forward_backward: float
    inference: float | None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def images_per_second(step: Callable[[], None], batch_size: int, iterations: int) -> float:
    """Median throughput over ``iterations`` timed calls, after one untimed warm-up call
    (which also pays any compilation)."""
    step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def objective(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, tuple):  # purifier: (purified, noise_level)
        return sum(o.sum() for o in out)
    return out.sum()


def measure(
    name: str, width: int, batch_size: int, iterations: int, compiled: bool
) -> tuple[float, float]:
    torch.manual_seed(0)
    kwargs = dict(width=width, in_channels=1)
    if is_classifier(name):
        kwargs["num_classes"] = 10
    model = create_model(name, **kwargs).train()
    x = torch.rand(batch_size, 1, 28, 28, requires_grad=True)

    def forward() -> None:
        objective(model, x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        objective(model, x).backward()

    use_kernels(model, "compiled" if compiled else "eager")
    return (
        images_per_second(forward, batch_size, iterations),
        images_per_second(forward_backward, batch_size, iterations),
    )


def measure_inference(name: str, width: int, batch_size: int, iterations: int) -> float:
    torch.manual_seed(0)
    model = create_model(name, width=width, in_channels=1).eval()
    x = torch.rand(batch_size, 1, 28, 28)

    @torch.no_grad()
    def forward() -> None:
        model(x)

    return images_per_second(forward, batch_size, iterations)


def table(rows: list[Row], batch_size: int, threads: int) -> str:
    lines = [
        f"Machine: {cpu_model()}, {usable_cores()} cores, torch {torch.__version__} "
        f"({threads} threads), Python {platform.python_version()}",
        f"Command: `{shlex.join(['python', *sys.argv])}`",
        "",
        f"Images/s, batch {batch_size}, 1x28x28, median of timed iterations. Forward and "
        "forward+backward in train mode with autograd; inference in eval mode without "
        "(the compiled kernels only replace the autograd path, so it is measured once).",
        "",
        "| model | width | params | kernels | forward | forward+backward | inference |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        inference = f"{r.inference:.0f}" if r.inference is not None else "-"
        lines.append(
            f"| {r.model} | {r.width} | {r.params / 1e3:.0f} k | {r.kernels} | "
            f"{r.forward:.0f} | {r.forward_backward:.0f} | {inference} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--widths", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=usable_cores(), help="default: all cores")
    parser.add_argument("--no-compile", action="store_true", help="eager kernels only")
    args = parser.parse_args(argv)
    if min(args.widths) < 1 or min(args.batch_size, args.iterations, args.threads) < 1:
        parser.error("widths, --batch-size, --iterations and --threads must be positive")

    threads = args.threads
    torch.set_num_threads(threads)
    rows = []
    for name in args.models:
        for width in args.widths:
            model = create_model(name, width=width, in_channels=1)
            params = sum(p.numel() for p in model.parameters())
            inference = measure_inference(name, width, args.batch_size, args.iterations)
            for compiled in [False] if args.no_compile else [False, True]:
                kernels = "compiled" if compiled else "eager"
                print(f"{name} width {width} {kernels}...", end=" ", file=sys.stderr, flush=True)
                fwd, fwd_bwd = measure(name, width, args.batch_size, args.iterations, compiled)
                print(f"{fwd:.0f} / {fwd_bwd:.0f} images/s", file=sys.stderr)
                rows.append(
                    Row(
                        name,
                        width,
                        params,
                        kernels,
                        fwd,
                        fwd_bwd,
                        None if compiled else inference,
                    )
                )
    print(table(rows, args.batch_size, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
