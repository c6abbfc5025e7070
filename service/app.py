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
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .config import Settings
from .errors import ERROR_RESPONSES, error_response, install_error_handlers
from .metrics import Metrics
from .routes import classify, demo, health, metrics, purify, v2
from .state import ServiceState

log = logging.getLogger("spikeguard.service")

# multipart framing around the file itself
UPLOAD_OVERHEAD_BYTES = 64 * 1024


class RequestMetricsMiddleware:
    """Latency per route template and status class, requests in flight, and the body limit:
    an early 413 for bodies whose declared length is over it (before anything is read), and
    a 413 as soon as a body without a declared length (chunked) streams past it, before
    the rest is buffered or spooled."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def send_and_record(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise StarletteHTTPException(
                        413, f"request body exceeds the limit of {self.max_body_bytes} bytes"
                    )
            return message

        self.metrics.inflight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                self.metrics.rejected.labels(reason="too_large").inc()
                response = error_response(
                    413,
                    "too_large",
                    f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}",
                )
                await response(scope, receive, send_and_record)
                return
            await self.app(scope, receive_within_limit, send_and_record)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when the graceful-shutdown timeout
            # (shutdown_timeout_s) runs out: answer 503 so the client retries elsewhere,
            # instead of uvicorn's plain-text 500; the request ends here either way.
            if started:
                raise
            self.metrics.rejected.labels(reason="shutting_down").inc()
            response = error_response(
                503,
                "shutting_down",
                "the service is shutting down and could not finish this request; retry",
                {"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send_and_record)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request_duration.labels(
                endpoint=endpoint, status_class=f"{status // 100}xx"
            ).observe(time.perf_counter() - start)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


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
    )
    app.state.service = service
    app.state.metrics = service.metrics
    install_error_handlers(app)
    for module in (classify, purify, health, v2, metrics, demo):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=service.metrics,
        max_body_bytes=settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES,
    )
    return app
