"""Accuracy of a served model over HTTP, the way a user sees it, against its manifest.

Posts every test image as a PNG to ``POST /classify`` twice (``purify=false``: the bare
classifier; ``purify=true``: purifier then classifier) and compares both accuracies with the
ones the manifest recorded at export. Exit status 1 when either differs by more than
``--tolerance`` points. Starts the service itself on 127.0.0.1 unless ``--url`` is given.

    .venv/bin/python bench/served_accuracy.py --model-dir models/fashion-mnist [--n 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import load_manifest  # noqa: E402
from harness.service import ServiceProcess  # noqa: E402


def test_images(dataset: str, n: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_split

    split = load_split(dataset, train=False, data_dir=data_dir).first(n)
    return split.images.numpy(), split.labels.numpy()


def png(image: np.ndarray) -> bytes:
    array = image.squeeze(0) if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def start_service(model_dir: Path) -> ServiceProcess:
    """The service on ``model_dir`` with its own thread and provider defaults, ready."""
    log_dir = Path(tempfile.mkdtemp(prefix="spikeguard-accuracy-"))
    service = ServiceProcess(model_dir, log_dir, intra_op_threads=None, providers=None)
    try:
        return service.wait_ready(120)
    except AssertionError as exc:
        service.stop()
        raise SystemExit(f"the service did not become ready: {exc}") from None


def classify_all(url: str, bodies: list[bytes], purify: bool, concurrency: int) -> list[int]:
    with httpx.Client(timeout=60) as client:

        def one(body: bytes) -> int:
            for attempt in range(5):
                r = client.post(
                    f"{url}/classify",
                    params={"purify": str(purify).lower(), "top_k": 1},
                    files={"file": ("image.png", body, "image/png")},
                )
                if r.status_code != 503:
                    r.raise_for_status()
                    return int(r.json()["class_index"])
                time.sleep(0.2 * (attempt + 1))  # backpressure: retry as a client should
            r.raise_for_status()
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, bodies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/fashion-mnist", type=Path)
    parser.add_argument("--url", help="a running service (default: start one on 127.0.0.1)")
    parser.add_argument("--n", type=int, default=10000, help="first N test images")
    parser.add_argument("--data-dir")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1.0, help="points (default 1)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.model_dir)
    images, labels = test_images(manifest.dataset, args.n, args.data_dir)
    bodies = [png(image) for image in images]
    service = None
    url = args.url
    if url is None:
        service = start_service(args.model_dir)
        url = service.url
    try:
        report = {"model": f"{manifest.name} v{manifest.version}", "n": len(labels), "url": url}
        for key, purify in (("clean_accuracy", False), ("purified_clean_accuracy", True)):
            start = time.perf_counter()
            predicted = np.array(classify_all(url, bodies, purify, args.concurrency))
            served = 100.0 * float((predicted == labels).mean())
            recorded = 100.0 * getattr(manifest.metrics, key) if manifest.metrics else None
            report[key] = {
                "served": round(served, 2),
                "manifest": None if recorded is None else round(recorded, 2),
                "manifest_images": manifest.metrics.eval_images if manifest.metrics else None,
                "requests_per_s": round(len(bodies) / (time.perf_counter() - start), 1),
            }
    finally:
        if service is not None:
            service.stop(timeout=30)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    off = [
        k for k in ("clean_accuracy", "purified_clean_accuracy")
        if report[k]["manifest"] is None
        or abs(report[k]["served"] - report[k]["manifest"]) > args.tolerance
    ]  # fmt: skip
    if off:
        print(f"served accuracy differs from the manifest by > {args.tolerance} points: {off}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
