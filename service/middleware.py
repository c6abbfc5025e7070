"""The ASGI middleware in front of every route: request metrics, the body limit, and an
answer for every refused request.

A response sent before the request's body was read (an early 413, a 503 while not ready)
is where a client that writes its whole body before reading (Python's urllib and requests
do) would otherwise lose the answer: closing a socket with unread bytes in it resets the
connection, and the client sees ``Connection reset by peer`` instead of the JSON error.
So before such a response goes out, the rest of the body is read and discarded, up to
``reject_drain_bytes`` and ``reject_drain_s``; a body past either bound gets its answer
with ``Connection: close``. A client that sent ``Expect: 100-continue`` has sent no body
yet: it gets the answer at once, with ``Connection: close``, and never sends the body.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .metrics import Metrics


class RequestMetricsMiddleware:
    """Latency per route template and status class, requests in flight, and the body limit:
    an early 413 for bodies whose declared length is over it (before anything is read), and
    a 413 as soon as a body without a declared length (chunked) streams past it, before
    the rest is buffered or spooled."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        drain_bytes: int,
        drain_seconds: float,
    ):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False
        declared = _header(scope, b"content-length")
        declared_length = int(declared) if declared is not None and declared.isdigit() else None
        body_done = declared_length == 0 or (
            declared is None and _header(scope, b"transfer-encoding") is None
        )
        expects_continue = (_header(scope, b"expect") or "").lower() == "100-continue"
        received = 0
        asked = False  # the app asked for the body: uvicorn has sent "100 Continue"

        async def receive_within_limit() -> Message:
            nonlocal received, body_done, asked
            asked = True
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise StarletteHTTPException(
                        413, f"request body exceeds the limit of {self.max_body_bytes} bytes"
                    )
            elif message["type"] == "http.disconnect":
                body_done = True
            return message

        async def send_and_record(message: Message) -> None:
            nonlocal status, started, body_done
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                if not body_done:
                    sent_nothing = expects_continue and not asked
                    body_done = not sent_nothing and await self._drain(receive)
                    if not body_done:
                        message = _with_connection_close(message)
            await send(message)

        self.metrics.inflight.inc()
        try:
            if declared_length is not None and declared_length > self.max_body_bytes:
                self.metrics.rejected.labels(reason="too_large").inc()
                response = error_response(
                    413,
                    "too_large",
                    f"request body of {declared_length} bytes exceeds the limit of "
                    f"{self.max_body_bytes}",
                    path=scope["path"],
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
                path=scope["path"],
            )
            await response(scope, receive, send_and_record)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request_duration_of(endpoint, f"{status // 100}xx").observe(
                time.perf_counter() - start
            )

    async def _drain(self, receive: Receive) -> bool:
        """Reads and discards the rest of the request body; True when it ended within
        ``drain_bytes`` and ``drain_seconds`` (or the client went away)."""
        drained = 0
        try:
            async with asyncio.timeout(self.drain_seconds):
                while drained < self.drain_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return True  # http.disconnect: nothing left to read
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            pass
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _with_connection_close(message: Message) -> Message:
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}
