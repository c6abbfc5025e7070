"""V2 inference bodies: what an oversized JSON body costs the service before it is refused,
and JSON against the binary tensor data extension for a batch, with a real V2 client.

Starts ``python -m service`` on 127.0.0.1 (a free port) for the model directory given and
reads the process's peak resident memory (``VmHWM``) around the oversized request.

    .venv/bin/python bench/v2_bodies.py --model-dir models/fashion-mnist --batch 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as triton

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from harness.service import ServiceProcess  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def oversized_json(url: str, name: str, pid: int, megabytes: int) -> str:
    values = megabytes * 1_000_000 // 5  # "0.5, " is 5 bytes
    data = [0.5] * values
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": data}]}
    )
    request = urllib.request.Request(
        f"{url}/v2/models/{name}/infer",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    before, start = peak_rss_mib(pid), time.perf_counter()
    try:
        urllib.request.urlopen(request, timeout=120).read()
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
        error.read()
    seconds = time.perf_counter() - start
    return (
        f"{len(body) / 1e6:.0f} MB JSON body: {status} after {seconds:.2f} s; service peak RSS "
        f"{before:.0f} -> {peak_rss_mib(pid):.0f} MiB"
    )


def json_vs_binary(host: str, name: str, shape: list[int], batch: int, repeats: int) -> list[str]:
    client = triton.InferenceServerClient(host, network_timeout=120)
    images = np.random.default_rng(0).random((batch, *shape), np.float32)
    lines = []
    for binary in (False, True):
        tensor = triton.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
        client.infer(name, [tensor], outputs=outputs)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.infer(name, [tensor], outputs=outputs)
            seconds.append(time.perf_counter() - start)
        kind = "binary" if binary else "JSON"
        lines.append(
            f"batch of {batch}, {kind}: median {statistics.median(seconds) * 1e3:.1f} ms "
            f"over {repeats} requests"
        )
    client.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "fashion-mnist")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--oversized-mb", type=int, default=10)
    args = parser.parse_args()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    log_dir = Path(tempfile.mkdtemp(prefix="spikeguard-v2-bodies-"))
    service = ServiceProcess(args.model_dir, log_dir, intra_op_threads=None)
    try:
        url, port = service.wait_ready(120).url, service.port
        print(oversized_json(url, manifest["name"], service.proc.pid, args.oversized_mb))
        shape = [manifest["input"][k] for k in ("channels", "height", "width")]
        for line in json_vs_binary(
            f"127.0.0.1:{port}", manifest["name"], shape, args.batch, args.repeats
        ):
            print(line)
    finally:
        service.stop(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
