"""The demo page (``GET /`` and its two assets) and the bundled samples it offers.

``GET /samples`` lists the sample images the model directory ships (the manifest's
``samples`` list, written by ``training/samples.py`` at export); ``GET /samples/{id}``
returns one as PNG. A request never names a file: the page's assets come from a fixed
table, and a sample id must match ``SAMPLE_ID`` and be listed in the manifest before the
path ``samples/<id>.png`` is built from it; the file's sha256 must match the manifest's.
"""

from __future__ import annotations

import logging
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from contract import SAMPLE_ID, SAMPLES_DIR, SampleRecord, sha256_bytes

from ..deps import RuntimeDep
from ..errors import APIError
from ..runtime import Runtime
from .classify import ModelRef

log = logging.getLogger("spikeguard.demo")

router = APIRouter(tags=["demo"])

STATIC_DIR = FilePath(__file__).resolve().parent.parent / "static"
# request path -> (file under service/static/, media type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
}
# The page loads nothing but its own assets and the API's responses (blob: URLs of them).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _asset(request_path: str) -> Response:
    filename, media_type = ASSETS[request_path]
    return Response(
        (STATIC_DIR / filename).read_bytes(), media_type=media_type, headers=PAGE_HEADERS
    )


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return _asset("/")


@router.get("/static/demo.css", include_in_schema=False)
async def stylesheet() -> Response:
    return _asset("/static/demo.css")


@router.get("/static/demo.js", include_in_schema=False)
async def script() -> Response:
    return _asset("/static/demo.js")


class Sample(BaseModel):
    id: str
    source: str
    label: str
    class_index: int
    variant: str
    threat_model: str | None
    threat_model_note: str
    eps: float
    steps: int
    attack: dict[str, Any] | None
    url: str


class SampleList(BaseModel):
    model: ModelRef
    samples: list[Sample]


def sample_index(runtime: Runtime) -> dict[str, SampleRecord]:
    """The manifest's well-formed sample records by id. The contract sets malformed ones
    aside (logged here), so no request can reach their files."""
    for reason in runtime.manifest.rejected_samples:
        log.warning("manifest sample record ignored: %s", reason)
    return {sample.id: sample for sample in runtime.manifest.samples}


@router.get("/samples", response_model=SampleList)
async def list_samples(runtime: RuntimeDep) -> SampleList:
    """The bundled sample images: clean test images and adversarial versions of them,
    each labelled with the threat model it was crafted under."""
    fields = set(Sample.model_fields) - {"url"}
    samples = [
        Sample(**record.model_dump(include=fields), url=f"/samples/{sample_id}")
        for sample_id, record in sample_index(runtime).items()
    ]
    manifest = runtime.manifest
    return SampleList(model=ModelRef(name=manifest.name, version=manifest.version), samples=samples)


def _read_sample(path: FilePath, sha256: str) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if sha256_bytes(data) == sha256 else None


@router.get(
    "/samples/{sample_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the sample image"}},
)
async def get_sample(
    sample_id: Annotated[str, Path(pattern=SAMPLE_ID, description="an id from GET /samples")],
    runtime: RuntimeDep,
) -> Response:
    record = sample_index(runtime).get(sample_id)
    if record is None:
        raise APIError(404, "sample_not_found", f"no sample {sample_id!r}; GET /samples lists them")
    path = runtime.model_dir / SAMPLES_DIR / f"{sample_id}.png"
    data = await run_in_threadpool(_read_sample, path, record.sha256)
    if data is None:
        log.error("sample %s: %s is missing or does not match its sha256", sample_id, path)
        raise APIError(500, "sample_unavailable", f"sample {sample_id!r} cannot be read")
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
