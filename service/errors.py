"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``,
except on the Open Inference Protocol routes (``/v2``), which answer V2's own
``{"error": "<message>"}`` so that V2 client libraries can read it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("spikeguard.errors")

# rejected_requests_total{reason}: client errors and refusals worth counting
REJECTION_REASONS = {
    400: "bad_image",
    404: "not_found",
    413: "too_large",
    415: "unsupported_format",
    422: "invalid_parameters",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response (but the V2 routes')."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """The body of an error response on the V2 routes: the protocol's shape."""

    error: str


# Documented on every route (the OpenAPI schema), replacing FastAPI's default 422 body,
# which this service never sends.
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorBody, "description": "the request was refused; the body says why"},
    503: {
        "model": ErrorBody,
        "description": "not ready, queue full or inference timed out; retry after Retry-After",
    },
}


# The same for the V2 routes.
V2_ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": V2ErrorBody, "description": "the request was refused; the body says why"},
    503: {"model": V2ErrorBody, "description": "not ready, queue full or inference timed out"},
}


def is_v2_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error answer for a request to ``path``: V2's shape under ``/v2``."""
    body = {"error": message} if is_v2_path(path) else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation_errors(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    def reject(request: Request, reason: str) -> None:
        request.app.state.metrics.rejected.labels(reason=reason).inc()

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        reason = {503: exc.code}.get(exc.status) or REJECTION_REASONS.get(exc.status)
        if reason:
            reject(request, reason)
        return error_response(exc.status, exc.code, exc.message, exc.headers, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        reject(request, "invalid_parameters")
        message = describe_validation_errors(list(exc.errors()))
        return error_response(422, "invalid_parameters", message, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a streamed body past the limit (RequestMetricsMiddleware)
            reject(request, "too_large")
            return error_response(
                413, "too_large", str(exc.detail), exc.headers, path=request.url.path
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(
            exc.status_code, code, str(exc.detail), exc.headers, path=request.url.path
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error", path=request.url.path)
