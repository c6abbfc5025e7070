"""Service settings, read from the environment (prefix ``SPIKEGUARD_``) or a ``.env`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPUs this process's cgroup quota allows (a container's CPU limit: cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when unlimited or
    unknown. Inside a container ``root`` is the container's own cgroup."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """CPU cores this process may use: the affinity mask (not the host's total), capped by
    a cgroup CPU quota (a container's CPU limit, which the mask does not show)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, int(limit)))


# Upload pixel limit derived from the model's input: a photo may be up to this many times
# the model's side in each direction (28x28: 3584x3584, 12.8 Mpx, more than a 12 Mpx
# phone photo), and never under the floor nor over the cap.
DOWNSCALE_PER_SIDE = 128
MIN_DERIVED_PIXELS = 4_000_000
MAX_DERIVED_PIXELS = 40_000_000


def default_max_pixels(height: int, width: int) -> int:
    """The upload pixel limit for a model whose input is ``height`` x ``width``."""
    derived = height * width * DOWNSCALE_PER_SIDE**2
    return min(max(derived, MIN_DERIVED_PIXELS), MAX_DERIVED_PIXELS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SPIKEGUARD_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_dir: Path = Path("models/fashion-mnist")
    providers: Literal["auto", "cuda", "cpu"] = "auto"
    mlf_kernel: Literal["auto", "off"] = Field(
        "auto",
        description="the native MLF neuron kernel (mlf_kernel) for CPU sessions: auto uses it "
        "when the library is built, off always runs the graphs' function body (same answers); "
        "CUDA sessions always run the function body",
    )
    inference_streams: int | None = Field(
        None,
        ge=1,
        description="batches that run at once, each on its own thread; unset: as many as "
        "the cores allow at intra_op_threads each (one per core when neither is set)",
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime threads per batch; unset: the cores divided among the "
        "streams (1 when neither is set: in every docs/benchmarks.md run the bare pipeline "
        "ran faster as one batch per thread than as one batch split over all threads; in "
        "the service the two measured within the runs' noise)",
    )
    intra_op_spinning: bool = Field(
        False,
        description="let idle ORT threads spin: lower latency on dedicated cores, but on "
        "shared or oversubscribed cores the spinning threads starve everything else "
        "(several times slower on a busy 2-core machine)",
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        description="images per inference batch, at most; with several streams and no batch "
        "wait a batch also leaves the other streams their share of what is queued",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long the first request of a batch waits for company; 0: a batch is "
        "what queued while the previous one ran (docs/benchmarks.md: on CPU a lone request "
        "pays the whole wait, and bigger batches buy almost nothing per image)",
    )
    queue_size: int = Field(256, ge=1, description="requests waiting for inference")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="width * height of an upload; unset: derived from the model's input "
        "size (default_max_pixels)",
    )
    max_infer_body_bytes: int | None = Field(
        None,
        ge=1,
        description="body of a V2 infer request; unset: derived from the model's input size "
        "and max_batch_size (service.v2_codec.default_body_limit)",
    )
    reject_drain_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="a request refused before its body was read (413, 503, ...): how many "
        "more body bytes are read and discarded so that a client that writes its whole body "
        "before reading gets the answer; past it the connection is closed",
    )
    reject_drain_s: float = Field(
        5.0, ge=0, description="how long that discarding may take before the connection closes"
    )
    docs: bool = Field(
        True,
        description="serve /docs, /redoc and /openapi.json (the compose stack and the "
        "Kubernetes manifests turn them off)",
    )
    inference_timeout_s: float = Field(10.0, gt=0)
    shutdown_timeout_s: float = Field(
        20.0,
        ge=0,
        description="after SIGTERM, how long in-flight requests may take before they are cut off",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @model_validator(mode="after")
    def _inference_layout(self) -> Settings:
        """Fills in the unset one of ``inference_streams`` and ``intra_op_threads`` from
        the cores this process may use (both unset: one stream per core, one thread each)."""
        cores = available_cores()
        if self.inference_streams is None and self.intra_op_threads is None:
            self.inference_streams, self.intra_op_threads = cores, 1
        elif self.inference_streams is None:
            self.inference_streams = max(1, cores // self.intra_op_threads)
        elif self.intra_op_threads is None:
            self.intra_op_threads = max(1, cores // self.inference_streams)
        return self
