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

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import Scope

from . import __version__
from .config import Settings
from .errors import ERROR_RESPONSES, V2_ERROR_RESPONSES, install_error_handlers
from .middleware import RequestMetricsMiddleware
from .routes import classify, demo, health, metrics, purify, v2
from .state import ServiceState

log = logging.getLogger("spikeguard.service")

# multipart framing around the file itself
UPLOAD_OVERHEAD_BYTES = 64 * 1024

# The upload routes take nothing but the request and parse it themselves (routes/uploads.py).
# Served as plain Starlette routes they skip FastAPI's per-request dependency solving and
# route bookkeeping, which cost about as much event-loop time as the rest of a /classify
# (measured in-process: ~0.3 ms of ~0.75 ms). Their schema comes from the FastAPI routes.
PLAIN_ROUTES = ("/classify", "/purify")

# FastAPI's own OpenTelemetry instrumentation checks the global providers on every request;
# the service exports Prometheus metrics (/metrics) and configures no OpenTelemetry provider.
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}


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
        telemetry=NO_TELEMETRY,
    )
    app.state.service = service
    app.state.metrics = service.metrics
    install_error_handlers(app)
    for module in (classify, purify, health, metrics, demo):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(v2.router, responses=V2_ERROR_RESPONSES)
    _serve_plain(app, PLAIN_ROUTES, [classify.router, purify.router])
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


class PlainRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's routes do: the request
    metrics label a request by its route's path template (``scope["route"]``)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _serve_plain(app: FastAPI, paths: tuple[str, ...], routers: list[APIRouter]) -> None:
    """Puts plain Starlette routes to the endpoints of ``routers``' routes at ``paths``
    (``endpoint(request) -> Response``) in front of every other route, once the OpenAPI
    schema has been built from the FastAPI routes (it is cached on the app: ``/openapi.json``
    and ``/docs`` still document them). A request for another method at such a path falls
    through to the FastAPI route's own 405."""
    app.openapi()
    plain = [
        PlainRoute(route.path, route.endpoint, methods=sorted(route.methods), name=route.name)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.path in paths
    ]
    if {route.path for route in plain} != set(paths):
        raise RuntimeError(f"no FastAPI route for some of {paths}")
    app.router.routes[:0] = plain
