"""The CUDA path in five minutes: CUDA-provider sessions for the bundled model, parity with
CPU and pipeline images/s by batch size on both. For a machine with an NVIDIA GPU.

    .venv/bin/python bench/gpu_check.py [--model-dir models/fashion-mnist] [--out FILE.md]

* CUDA sessions are made with TF32 off (``use_tf32=0``) and without the native MLF kernel
  (it is CPU only: CUDA sessions run the graphs' function body), exactly as the service
  makes them; every node must be placed on CUDA or the check says which were not.
* CPU sessions are the service's CPU sessions (native kernel when built).
* Parity on real test images, the export's rule (``training/export/parity.py``): a spike
  count may differ (a potential within rounding of a threshold) on at most 5 % of images;
  on every other image logits and purified pixels agree within 1e-4 and the top-1 class is
  the same.
* Throughput: purifier -> classifier images/s, batches 1 to 256, medians.

Without CUDA (no GPU, or an onnxruntime without the CUDA provider) it stops at once with
exit status 2 and says why. Exit status 1 when parity fails. Needs no torch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
ATOL = 1e-4  # training/export/parity.py: PARITY_ATOL
MAX_FLIP_FRACTION = 0.05  # training/export/parity.py
BATCHES = (1, 8, 32, 64, 128, 256)
CUDA = "CUDAExecutionProvider"
ROLES = ("purifier", "classifier")


def fail(message: str, code: int = 2) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(code)


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        return out.stdout.strip().replace("\n", "; ")
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi not available)"


def sessions(model_dir: Path, cuda: bool) -> dict:
    import onnxruntime as ort

    import mlf_kernel

    manifest = json.loads((model_dir / "manifest.json").read_text())
    out = {}
    for role in ROLES:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if cuda:
            providers = [(CUDA, {"use_tf32": "0"}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
            if mlf_kernel.available():
                mlf_kernel.register(options)
        path = model_dir / manifest["files"][role]["path"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        if cuda and session.get_providers()[0] != CUDA:
            fail(
                f"the {role} session runs on {session.get_providers()}, not CUDA: no usable "
                "GPU, or no CUDA 13 / cuDNN 9 libraries (ONNX Runtime's log above says which)"
            )
        out[role] = session
    return out


def pipeline(s: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    purified, _, purifier_spikes = s["purifier"].run(None, {"image": images})
    logits, classifier_spikes = s["classifier"].run(None, {"image": purified})
    return {"purified": purified, "logits": logits, "spikes": (purifier_spikes, classifier_spikes)}


def parity(cpu: dict, gpu: dict, images: np.ndarray, batch: int = 100) -> dict:
    flips = 0
    worst_logits = worst_pixels = 0.0
    top1_mismatch = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        a, b = pipeline(cpu, x), pipeline(gpu, x)
        flip = (a["spikes"][0] != b["spikes"][0]) | (a["spikes"][1] != b["spikes"][1])
        flips += int(flip.sum())
        keep = ~flip
        n = len(x)
        if keep.any():
            logits = np.abs(a["logits"] - b["logits"]).reshape(n, -1).max(1)[keep]
            pixels = np.abs(a["purified"] - b["purified"]).reshape(n, -1).max(1)[keep]
            worst_logits = max(worst_logits, float(logits.max()))
            worst_pixels = max(worst_pixels, float(pixels.max()))
            top1 = a["logits"].argmax(1) != b["logits"].argmax(1)
            top1_mismatch += int((top1 & keep).sum())
    result = {
        "images": len(images),
        "flipped": flips,
        "logits_max_abs": worst_logits,
        "purified_max_abs": worst_pixels,
        "top1_mismatch_without_flip": top1_mismatch,
    }
    result["ok"] = (
        flips <= MAX_FLIP_FRACTION * len(images)
        and worst_logits < ATOL
        and worst_pixels < ATOL
        and top1_mismatch == 0
    )
    return result


def throughput(s: dict, batch: int, repeats: int) -> float:
    x = np.random.default_rng(0).random((batch, 1, 28, 28), np.float32)
    pipeline(s, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline(s, x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/fashion-mnist")
    parser.add_argument("--images", type=int, default=1000, help="test images for parity")
    parser.add_argument(
        "--test-images", type=Path, default=TEST_IMAGES,
        help="the Fashion-MNIST test images file (IDX, gzip)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        fail("onnxruntime is not installed")
    if CUDA not in ort.get_available_providers():
        fail(f"this onnxruntime has no CUDA provider ({ort.get_available_providers()})")
    model_dir = (REPO / args.model_dir).resolve()
    try:
        gpu = sessions(model_dir, cuda=True)
    except Exception as exc:  # no device, no driver, no CUDA libraries
        fail(f"CUDA sessions cannot start: {exc}")
    cpu = sessions(model_dir, cuda=False)
    with gzip.open(args.test_images) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    images = (raw[: args.images].astype(np.float32) / 255.0).copy()
    check = parity(cpu, gpu, images)
    rows = [
        (b, throughput(cpu, b, args.repeats), throughput(gpu, b, args.repeats)) for b in BATCHES
    ]
    lines = [
        "## CUDA check (bench/gpu_check.py)",
        "",
        f"GPU: {gpu_name()}; CPU: {platform.processor() or platform.machine()}; onnxruntime "
        f"{ort.__version__}; model {model_dir.name}; TF32 off.",
        "",
        f"Parity CUDA vs CPU on {check['images']} test images: spike counts differ on "
        f"{check['flipped']} (limit {MAX_FLIP_FRACTION:.0%}); on the others max |diff| logits "
        f"{check['logits_max_abs']:.2g}, purified {check['purified_max_abs']:.2g} (limit "
        f"{ATOL:g}); top-1 mismatches {check['top1_mismatch_without_flip']}: "
        + ("passed." if check["ok"] else "FAILED."),
        "",
        "| batch | CPU images/s | CUDA images/s | CUDA / CPU |",
        "|---:|---:|---:|---:|",
    ] + [f"| {b} | {c:.1f} | {g:.1f} | {g / c:.2f} |" for b, c, g in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
