"""``POST /purify``: the purified image as PNG, or (``output=noise``) the noise-level map
the purifier estimated: a grey PNG whose level / 255 is the estimated noise level at that
pixel (in pixel units, [0, 1]; averaged over the colour channels). Both carry the same
``X-Noise-Level`` (the map's mean) and ``X-Spike-Count`` headers."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..imaging import encode_png
from .query import parse_query, query_openapi
from .uploads import UPLOAD_OPENAPI, read_upload

router = APIRouter(tags=["purify"])


class PurifyParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    size: Literal["model", "original"] = Field(
        "model", description="model resolution, or resized back to the upload's size"
    )
    output: Literal["purified", "noise"] = Field(
        "purified",
        description="the purified image, or the estimated noise-level map (level / 255)",
    )


@router.post(
    "/purify",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the purified image or noise map"}
    },
    openapi_extra={**UPLOAD_OPENAPI, **query_openapi(PurifyParams)},
)
async def purify_image(request: Request) -> Response:
    """The purified upload (or its noise-level map) as PNG."""
    params = parse_query(PurifyParams, request)
    size, output = params.size, params.output
    service, runtime, image, _ = await read_upload(request)
    job = await service.infer(runtime, image.pixels[None], purify=True, classify=False)
    result = job.result
    assert result.purified is not None and result.noise_map is not None
    target = image.original_size if size == "original" else None
    pixels = result.purified[0] if output == "purified" else result.noise_map[0].mean(0)[None]
    png = await run_in_threadpool(encode_png, pixels, target)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Noise-Level": f"{float(result.noise_level[0]):.6f}",
            "X-Spike-Count": str(int(result.purifier_spikes[0])),
            "X-Model": f"{runtime.manifest.name}/{runtime.manifest.version}",
        },
    )
