"""``create_app(settings)``: the FastAPI application.

Start-up (lifespan) begins loading the model in the background and returns at once, so
``/healthz`` answers while the model loads; ``/readyz`` turns 200 when the manifest, the
files' sha256, the sessions and a warm-up batch have all checked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

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
# Their POSTs skip FastAPI's and Starlette's middleware stack, routing and dependency
# solving (``ServiceApp.__call__``): those layers cost the event loop about as much as the
# rest of a /classify. Their schema comes from the FastAPI routes, which still answer every
# other method at these paths.
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
    app = ServiceApp(
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
    request_limits = {
        "metrics": service.metrics,
        # an upload with its framing, or a V2 infer body when that limit is set higher
        "max_body_bytes": max(
            settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES, settings.max_infer_body_bytes or 0
        ),
        "drain_bytes": settings.reject_drain_bytes,
        "drain_seconds": settings.reject_drain_s,
    }
    app.add_middleware(RequestMetricsMiddleware, **request_limits)
    app.serve_plain(PLAIN_ROUTES, [classify.router, purify.router], request_limits)
    return app


class ServiceApp(FastAPI):
    """The FastAPI application, but for the POSTs to ``serve_plain``'s paths: those go from
    the server straight to ``RequestMetricsMiddleware`` (the body limit, the request metrics)
    and the route's endpoint, whose exceptions the app's own exception handlers answer, as
    they would behind FastAPI's stack. Everything else (other paths and methods, lifespan)
    is FastAPI's."""

    _plain: dict[str, APIRoute] = {}  # path -> route, set by serve_plain
    _plain_app: ASGIApp

    def serve_plain(
        self, paths: tuple[str, ...], routers: list[APIRouter], request_limits: dict
    ) -> None:
        """Serves POSTs to ``paths`` (routes of ``routers``, included in the app, whose
        endpoint is ``endpoint(request) -> Response``) past the framework, with a
        ``RequestMetricsMiddleware`` built from ``request_limits``. The OpenAPI schema is
        built first (it is cached on the app) so that it documents the routes as FastAPI
        sees them."""
        self.openapi()
        found = {
            route.path: route
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and route.path in paths and "POST" in route.methods
        }
        if set(found) != set(paths):
            raise RuntimeError(f"no FastAPI POST route for some of {paths}")
        self._plain = found
        self._plain_app = RequestMetricsMiddleware(self._endpoint, **request_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._plain
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and not self.root_path
            and (route := self._plain.get(scope["path"])) is not None
        ):
            scope["app"] = self
            scope["route"] = route  # the request metrics label requests by its path
            await self._plain_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await scope["route"].endpoint(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        """The app's exception handler for ``exc`` (the most specific registered class);
        ``Exception``'s handler logs and answers 500."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc
