"""Liveness and readiness for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import ServiceDep
from ..errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP (whether or not a model is loaded)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 with the reason otherwise."""
    runtime = service.runtime  # once: a reload may replace it meanwhile
    if not service.ready or runtime is None:
        return error_response(
            503, "not_ready", f"{service.status}: {service.reason}", {"Retry-After": "5"}
        )
    manifest = runtime.manifest
    return JSONResponse(
        {
            "status": "ready",
            "model": {"name": manifest.name, "version": manifest.version},
            "providers": runtime.providers,
            "neuron_kernel": runtime.kernel.as_dict(),
            "inference": {
                "streams": service.settings.inference_streams,
                "intra_op_threads": service.settings.intra_op_threads,
            },
        }
    )
