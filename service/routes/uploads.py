"""Reading and decoding an uploaded image (shared by /classify and /purify)."""

from __future__ import annotations

import functools
import time

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from ..errors import APIError
from ..imaging import DecodedImage, decode_image, header_pixels
from ..runtime import Runtime
from ..state import ServiceState

# Uploads this small are decoded on the event loop (tens of microseconds): the hop to the
# thread pool and back would cost more than the decode. The pixel bound keeps a small file
# that expands to a large image (a flat PNG) off the loop.
INLINE_DECODE_MAX_BYTES = 16 * 1024
INLINE_DECODE_MAX_PIXELS = 128 * 128


async def one_file(request: Request) -> None:
    """Refuses a form with several files in the ``file`` field: the route would answer for
    one of them and silently drop the others. (The form is parsed once; this reads
    FastAPI's parse of it.)"""
    count = len((await request.form()).getlist("file"))
    if count > 1:
        raise APIError(
            422, "invalid_parameters", f"file: send exactly one file in this field, got {count}"
        )


async def read_upload(
    file: UploadFile, service: ServiceState, runtime: Runtime
) -> tuple[DecodedImage, float]:
    """Returns the decoded image and the seconds decoding took (CPU work on anything but a
    small image runs in the thread pool so it does not stall the event loop)."""
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
    manifest = runtime.manifest
    start = time.perf_counter()
    decode = functools.partial(
        decode_image,
        data,
        channels=manifest.channels,
        size=(manifest.width, manifest.height),
        max_bytes=limit,
        max_pixels=service.max_pixels(runtime),
    )
    pixels = header_pixels(data) if len(data) <= INLINE_DECODE_MAX_BYTES else None
    if pixels is not None and pixels <= INLINE_DECODE_MAX_PIXELS:
        image = decode()
    else:
        image = await run_in_threadpool(decode)
    seconds = time.perf_counter() - start
    service.metrics.stage_duration.labels(stage="decode").observe(seconds)
    return image, seconds
