"""Request dependencies as ``Annotated`` aliases.

Both are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, which
would cost every request two thread hops (and two waits for the GIL) for a lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .runtime import Runtime
from .state import ServiceState


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


async def get_runtime(service: Annotated[ServiceState, Depends(get_service)]) -> Runtime:
    """The loaded runtime, or a 503 naming why there is none."""
    return service.require_ready()


ServiceDep = Annotated[ServiceState, Depends(get_service)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
