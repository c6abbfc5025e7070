"""Reading and decoding an uploaded image (shared by /classify and /purify).

An image arrives either as a multipart form with one file in the field ``file`` (what
browsers, ``curl -F file=@x.png`` and ``requests(files=...)`` send) or as the request body
itself with an image media type (``curl --data-binary @x.png -H 'Content-Type: image/png'``),
which skips multipart framing and parsing altogether. The routes read the request
themselves rather than through FastAPI's ``File()`` parameter and dependency solving: those
cost more per request than the inference of a small image, and a single upload needs
neither. ``UPLOAD_OPENAPI`` documents both forms in the schema.
"""

from __future__ import annotations

import functools
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import APIError
from ..forms import single_file
from ..imaging import ALLOWED_FORMATS, DecodedImage, decode_opened, open_image
from ..runtime import Runtime
from ..state import ServiceState

# Uploads this small are decoded on the event loop (tens of microseconds): the hop to the
# thread pool and back would cost more than the decode. The pixel bound keeps a small file
# that expands to a large image (a flat PNG) off the loop.
INLINE_DECODE_MAX_BYTES = 16 * 1024
INLINE_DECODE_MAX_PIXELS = 128 * 128

MULTIPART = "multipart/form-data"
# A form whose declared length is at most this is read whole and tried in the common
# single-file layout first (service/forms.py); a larger or chunked one streams through the
# general parser, which spools files past this size to disk (Starlette's default).
WHOLE_FORM_MAX_BYTES = 1024 * 1024
# A body with one of these media types is the image itself. The decoder goes by the file's
# own signature, not by the declared type; an image/* type the service cannot decode is
# refused with 415 by the decoder, like the same file in a form.
RAW_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
OCTET_STREAM = "application/octet-stream"

_BINARY = {"type": "string", "format": "binary"}
UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": (
            "the image, as a multipart form with one file in the field `file`, or as the "
            f"body itself with an image media type; formats: {', '.join(sorted(ALLOWED_FORMATS))}"
        ),
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"file": {**_BINARY, "description": "the image"}},
                    "required": ["file"],
                }
            },
            **{media: {"schema": _BINARY} for media in (*RAW_MEDIA_TYPES, OCTET_STREAM)},
        },
    }
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def upload_bytes(request: Request, limit: int) -> bytes:
    """The uploaded file's bytes (at most ``limit + 1`` of them read from a form's file).

    Raises ``APIError``: 415 for a body that is neither a form nor an image, 422 for a form
    without exactly one file in ``file``."""
    media = _media_type(request)
    if media == MULTIPART:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) <= WHOLE_FORM_MAX_BYTES:
            content = single_file(
                await request.body(), request.headers["content-type"].encode("latin-1")
            )
            if content is not None:
                return content
            # anything else: the general parser below reads the body already buffered
        async with request.form(max_files=8, max_fields=64) as form:
            items = form.getlist("file")
            if not items:
                fields = sorted(set(form.keys()))
                raise APIError(
                    422,
                    "invalid_parameters",
                    "file: the form has no field named file"
                    + (f" (it has {', '.join(fields)})" if fields else ""),
                )
            if len(items) > 1:
                raise APIError(
                    422,
                    "invalid_parameters",
                    f"file: send exactly one file in this field, got {len(items)}",
                )
            item = items[0]
            if not isinstance(item, UploadFile):
                raise APIError(
                    422, "invalid_parameters", "file: expected a file, got a plain form value"
                )
            return await item.read(limit + 1)
    if media.startswith("image/") or media == OCTET_STREAM:
        return await request.body()
    described = f"a body of type {media}" if media else "a body without a Content-Type"
    raise APIError(
        415,
        "unsupported_media_type",
        f"{described} is not accepted; send a {MULTIPART} form with the image in the field "
        f"file, or the image itself as the body with Content-Type image/png (or image/jpeg, "
        f"image/webp, image/bmp, image/gif, {OCTET_STREAM})",
    )


async def read_upload(request: Request) -> tuple[ServiceState, Runtime, DecodedImage, float]:
    """The service, its loaded runtime (a 503 when there is none), the decoded upload and
    the seconds decoding took (CPU work on anything but a small image runs in the thread
    pool so it does not stall the event loop)."""
    service: ServiceState = request.app.state.service
    runtime = service.require_ready()  # before the body: a 503 need not read it
    limit = service.settings.max_upload_bytes
    data = await upload_bytes(request, limit)
    if len(data) > limit:
        raise APIError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
    manifest = runtime.manifest
    start = time.perf_counter()
    opened = open_image(data, max_bytes=limit, max_pixels=service.max_pixels(runtime))
    decode = functools.partial(
        decode_opened, opened, channels=manifest.channels, size=(manifest.width, manifest.height)
    )
    width, height = opened.size
    if len(data) <= INLINE_DECODE_MAX_BYTES and width * height <= INLINE_DECODE_MAX_PIXELS:
        image = decode()
    else:
        image = await run_in_threadpool(decode)
    seconds = time.perf_counter() - start
    service.metrics.stage["decode"].observe(seconds)
    return service, runtime, image, seconds
