"""What one app instance holds: settings, metrics, and (once loaded) the runtime and the
batcher. Loading runs in the background so that liveness answers while a model loads; a
model that fails to load leaves the service up and not ready, with the reason.

``reload()`` (SIGHUP) loads the model directory again with every check of the first load;
a model that fails one is never used, and the one before keeps serving.

One model per request: the ``Runtime`` (sessions, manifest: class names, version) is one
object, replaced by a reload in a single assignment. A request takes it once
(``require_ready``) and passes it to ``infer``, whose batch runs on that same object, so
its answer never mixes the labels or version of one model with the outputs of another."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Literal

import numpy as np

from .batching import JobResult, MicroBatcher, Overloaded
from .config import MAX_DERIVED_PIXELS, Settings, default_max_pixels
from .errors import APIError
from .imaging import limit_pillow_pixels
from .metrics import Metrics
from .runtime import Runtime, StageResult, load_runtime

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
        self._reload_task: asyncio.Task | None = None
        limit_pillow_pixels(settings.max_pixels or MAX_DERIVED_PIXELS)

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
            self._run_batch,
            self.metrics,
            max_batch_size=self.settings.max_batch_size,
            batch_wait_ms=self.settings.batch_wait_ms,
            queue_size=self.settings.queue_size,
            streams=self.settings.inference_streams,
        )
        self.batcher.start()
        self._publish_model_info(runtime)
        self.metrics.ready.set(1)
        self.status, self.reason = "ready", "ready"

    @staticmethod
    def _run_batch(
        runtime: Runtime, images: np.ndarray, purify: np.ndarray, classify: np.ndarray
    ) -> StageResult:
        """The batcher's runner: the runtime the batch's requests started with."""
        return runtime.run(images, purify, classify)

    def _publish_model_info(self, runtime: Runtime) -> None:
        manifest = runtime.manifest
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            name=manifest.name, version=manifest.version, provider=runtime.provider
        ).set(1)
        for mode in ("native", "fallback", "unused"):
            self.metrics.neuron_kernel.labels(mode=mode).set(int(mode == runtime.kernel.mode))

    def request_reload(self) -> None:
        """Starts ``reload()`` in the background (the SIGHUP handler); one at a time."""
        if self._reload_task is not None and not self._reload_task.done():
            log.warning("a reload is already running; this request is ignored")
            return
        self._reload_task = asyncio.get_running_loop().create_task(
            self.reload(), name="reload-model"
        )

    async def reload(self) -> bool:
        """Loads ``settings.model_dir`` again: manifest, every file's sha256 against it, the
        sessions and a warm-up batch. Only a model that passes all of them, with the input
        shape and class count of the one serving, replaces it: requests that start after
        the swap use it, those already started finish on the one they took. Otherwise the
        current model keeps serving and the reason is logged and counted. A service whose
        first load failed tries that load again. Returns success."""
        if self.status == "loading":
            log.warning("reload ignored: the model is still loading")
            return False
        if self.runtime is None:
            self.status, self.reason = "loading", "the model is loading"
            await self.load()
            self.metrics.reloads.labels(result="ok" if self.ready else "failed").inc()
            return self.ready
        current = self.runtime.manifest
        try:
            runtime = await asyncio.to_thread(load_runtime, self.settings)
        except Exception as exc:  # ModelLoadError, or anything else a broken model causes
            return self._reload_failed(str(exc))
        new = runtime.manifest
        if (new.input_shape, new.num_classes) != (current.input_shape, current.num_classes):
            return self._reload_failed(
                f"input {new.input_shape} and {new.num_classes} classes differ from the "
                f"serving model's {current.input_shape} and {current.num_classes}; restart "
                "the service to serve it"
            )
        self.runtime = runtime
        self._publish_model_info(runtime)
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded: serving %s v%s (was v%s)", new.name, new.version, current.version)
        return True

    def _reload_failed(self, reason: str) -> bool:
        assert self.runtime is not None
        manifest = self.runtime.manifest
        self.metrics.reloads.labels(result="failed").inc()
        log.error(
            "reload failed, still serving %s v%s: %s", manifest.name, manifest.version, reason
        )
        return False

    async def close(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        if self.batcher is not None:
            await self.batcher.stop()
        self.metrics.ready.set(0)

    def max_pixels(self, runtime: Runtime) -> int:
        """The upload pixel limit: the setting, or one derived from the model's input."""
        manifest = runtime.manifest
        return self.settings.max_pixels or default_max_pixels(manifest.height, manifest.width)

    def require_ready(self) -> Runtime:
        if not self.ready or self.runtime is None:
            raise APIError(
                503, "not_ready", f"model not ready: {self.reason}", {"Retry-After": "5"}
            )
        return self.runtime

    async def infer(
        self, runtime: Runtime, images: np.ndarray, *, purify: bool, classify: bool
    ) -> JobResult:
        """Runs ``images`` [n, C, H, W] on ``runtime`` (the one ``require_ready`` gave the
        request) through the batcher and records per-image metrics."""
        self.require_ready()
        assert self.batcher is not None
        try:
            job = await self.batcher.submit(
                images,
                purify=purify,
                classify=classify,
                timeout=self.settings.inference_timeout_s,
                model=runtime,
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
                    self.metrics.spikes["purifier"].observe(spikes)
                    self.metrics.noise_level.observe(noise)
        if result.classifier_spikes is not None:
            for spikes in result.classifier_spikes:
                if not math.isnan(spikes):
                    self.metrics.spikes["classifier"].observe(spikes)
        return job
