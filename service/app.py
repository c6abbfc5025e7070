"""``create_app(settings)``: the FastAPI application.

Start-up (lifespan) begins loading the model in the background and returns at once, so
``/healthz`` answers while the model loads; ``/readyz`` turns 200 when the manifest, the
files' sha256, the sessions and a warm-up batch have all checked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from . import __version__
from .config import Settings
from .errors import ERROR_RESPONSES, V2_ERROR_RESPONSES, install_error_handlers
from .middleware import RequestMetricsMiddleware
from .routes import classify, demo, health, metrics, purify, v2
from .state import ServiceState

log = logging.getLogger("spikeguard.service")

# multipart framing around the file itself
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def _reload_on_sighup(service: ServiceState) -> Callable[[], None]:
    """SIGHUP reloads the model (``ServiceState.reload``); returns the undo. Only the main
    thread's event loop receives signals: an app run elsewhere (an in-process test client)
    goes without."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: ServiceState = app.state.service
    loading = asyncio.create_task(service.load(), name="load-model")
    remove_reload_handler = _reload_on_sighup(service)
    try:
        yield
    finally:
        remove_reload_handler()
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await service.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = ServiceState(settings)
    app = FastAPI(
        title="spikeguard",
        summary="Purified classification: a spiking purifier in front of a spiking classifier",
        version=__version__,
        lifespan=lifespan,
        # off in the compose stack and on Kubernetes (SPIKEGUARD_DOCS=false)
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.service = service
    app.state.metrics = service.metrics
    install_error_handlers(app)
    for module in (classify, purify, health, metrics, demo):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(v2.router, responses=V2_ERROR_RESPONSES)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=service.metrics,
        # an upload with its framing, or a V2 infer body when that limit is set higher
        max_body_bytes=max(
            settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES, settings.max_infer_body_bytes or 0
        ),
        drain_bytes=settings.reject_drain_bytes,
        drain_seconds=settings.reject_drain_s,
    )
    return app
