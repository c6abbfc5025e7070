"""``POST /purify``: the purified image as PNG."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..deps import RuntimeDep, ServiceDep
from ..imaging import encode_png
from .uploads import one_file, read_upload

router = APIRouter(tags=["purify"])


@router.post(
    "/purify",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the purified image"}},
    dependencies=[Depends(one_file)],
)
async def purify_image(
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP or GIF image")],
    service: ServiceDep,
    runtime: RuntimeDep,
    size: Annotated[
        Literal["model", "original"],
        Query(description="model resolution, or resized back to the upload's size"),
    ] = "model",
) -> Response:
    image, _ = await read_upload(file, service, runtime)
    job = await service.infer(image.pixels[None], purify=True, classify=False)
    result = job.result
    assert result.purified is not None
    target = image.original_size if size == "original" else None
    png = await run_in_threadpool(encode_png, result.purified[0], target)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Noise-Level": f"{float(result.noise_level[0]):.6f}",
            "X-Spike-Count": str(int(result.purifier_spikes[0])),
            "X-Model": f"{runtime.manifest.name}/{runtime.manifest.version}",
        },
    )
