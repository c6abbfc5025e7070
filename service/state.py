"""What one app instance holds: settings, metrics, and (once loaded) the runtime and the
batcher. Loading runs in the background so that liveness answers while a model loads; a
model that fails to load leaves the service up and not ready, with the reason."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Literal

import numpy as np

from .batching import JobResult, MicroBatcher, Overloaded
from .config import Settings
from .errors import APIError
from .imaging import limit_pillow_pixels
from .metrics import Metrics
from .runtime import Runtime, load_runtime

log = logging.getLogger("spikeguard.service")

RETRY_AFTER_S = "1"


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.reason = "the model is loading"
        self.runtime: Runtime | None = None
        self.batcher: MicroBatcher | None = None
        self.metrics.ready.set(0)
        limit_pillow_pixels(settings.max_pixels)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def load(self) -> None:
        """Loads the model off the event loop; never raises (the reason goes to /readyz)."""
        try:
            runtime = await asyncio.to_thread(load_runtime, self.settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ModelLoadError, or anything else a broken model causes
            self.status, self.reason = "failed", str(exc)
            log.error("model not loaded, the service stays not ready: %s", exc)
            return
        self.runtime = runtime
        self.batcher = MicroBatcher(
            runtime.run,
            self.metrics,
            max_batch_size=self.settings.max_batch_size,
            batch_wait_ms=self.settings.batch_wait_ms,
            queue_size=self.settings.queue_size,
        )
        self.batcher.start()
        manifest = runtime.manifest
        self.metrics.model_info.labels(
            name=manifest.name, version=manifest.version, provider=runtime.provider
        ).set(1)
        self.metrics.ready.set(1)
        self.status, self.reason = "ready", "ready"

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.metrics.ready.set(0)

    def require_ready(self) -> Runtime:
        if not self.ready or self.runtime is None:
            raise APIError(
                503, "not_ready", f"model not ready: {self.reason}", {"Retry-After": "5"}
            )
        return self.runtime

    async def infer(self, images: np.ndarray, *, purify: bool, classify: bool) -> JobResult:
        """Runs ``images`` [n, C, H, W] through the batcher and records per-image metrics."""
        self.require_ready()
        assert self.batcher is not None
        try:
            job = await self.batcher.submit(
                images,
                purify=purify,
                classify=classify,
                timeout=self.settings.inference_timeout_s,
            )
        except Overloaded as exc:
            raise APIError(503, "queue_full", str(exc), {"Retry-After": RETRY_AFTER_S}) from None
        except TimeoutError:
            raise APIError(
                503,
                "inference_timeout",
                f"no result within {self.settings.inference_timeout_s}s",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        result = job.result
        if result.purifier_spikes is not None:
            for spikes, noise in zip(result.purifier_spikes, result.noise_level, strict=True):
                if not math.isnan(spikes):
                    self.metrics.spikes_per_image.labels(network="purifier").observe(spikes)
                    self.metrics.noise_level.observe(noise)
        if result.classifier_spikes is not None:
            for spikes in result.classifier_spikes:
                if not math.isnan(spikes):
                    self.metrics.spikes_per_image.labels(network="classifier").observe(spikes)
        return job
