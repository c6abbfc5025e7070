"""Open Inference Protocol (KServe V2) REST endpoints, so standard V2 clients work.

The served model takes ``image`` (FP32 ``[-1, C, H, W]``, pixels in [0, 1]) and returns
``logits`` (FP32 ``[-1, K]``), ``classifier_spikes`` and ``purifier_spikes`` (FP32
``[-1]``). The request parameter ``purify`` (default true) skips the purifier when false;
``purifier_spikes`` is then not an output. Bodies are JSON with or without a
``Content-Type``, or use the binary tensor data extension (``service/v2_codec.py``);
errors are V2's ``{"error": "<message>"}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from .. import __version__
from ..deps import RuntimeDep, ServiceDep
from ..errors import APIError, error_response
from ..runtime import Runtime
from ..v2_codec import (
    EXTENSIONS,
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    default_body_limit,
    encode_response,
    inline_schema,
    input_array,
    parse_request,
    read_body,
    wanted_outputs,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

ModelName = Annotated[str, Path(description="the served model's name (see GET /v2/models/...)")]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


def _model(runtime: Runtime, name: str, version: str | None = None) -> None:
    manifest = runtime.manifest
    if name != manifest.name:
        raise APIError(
            404, "model_not_found", f"no model {name!r}; this server serves {manifest.name!r}"
        )
    if version is not None and version != manifest.version:
        raise APIError(
            404,
            "version_not_found",
            f"model {name!r} has no version {version!r} ({manifest.version!r})",
        )


def _metadata(runtime: Runtime) -> ModelMetadata:
    m = runtime.manifest
    return ModelMetadata(
        name=m.name,
        versions=[m.version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name="image", datatype="FP32", shape=[-1, *m.input_shape])],
        outputs=[
            TensorMetadata(name="logits", datatype="FP32", shape=[-1, m.num_classes]),
            TensorMetadata(name="classifier_spikes", datatype="FP32", shape=[-1]),
            TensorMetadata(name="purifier_spikes", datatype="FP32", shape=[-1]),
        ],
        # how the neurons run: the native kernel, or the graphs' function body
        parameters={"neuron_kernel": runtime.kernel.mode, "providers": runtime.providers},
    )


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "spikeguard", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    if not service.ready:
        message = f"{service.status}: {service.reason}"
        return error_response(503, "not_ready", message, path="/v2/health/ready")
    return JSONResponse({"ready": True})


@router.get("/models/{name}", response_model=ModelMetadata)
async def model_metadata(name: ModelName, runtime: RuntimeDep) -> ModelMetadata:
    _model(runtime, name)
    return _metadata(runtime)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata)
async def model_version_metadata(
    name: ModelName, version: str, runtime: RuntimeDep
) -> ModelMetadata:
    _model(runtime, name, version)
    return _metadata(runtime)


@router.get("/models/{name}/ready")
async def model_ready(name: ModelName, service: ServiceDep) -> JSONResponse:
    runtime = service.require_ready()
    _model(runtime, name)
    return JSONResponse({"name": name, "ready": True})


INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"binary tensor data: a JSON header of {HEADER_LENGTH} "
                "bytes, then the raw tensors",
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"the outputs (binary ones after a JSON header of {HEADER_LENGTH} bytes)",
        "content": {"application/json": {}, "application/octet-stream": {}},
    }
}


async def _infer(
    request: Request, service: ServiceDep, runtime: Runtime, name: str, version: str | None
) -> Response:
    _model(runtime, name, version)
    manifest = runtime.manifest
    limit = service.settings.max_infer_body_bytes or default_body_limit(
        manifest.input_shape, service.settings.max_batch_size
    )
    body = await read_body(request, limit)
    infer_request, binary = parse_request(body, request.headers.get(HEADER_LENGTH))
    images = input_array(
        infer_request, binary, manifest.input_shape, service.settings.max_batch_size
    )
    purify = (infer_request.parameters or {}).get("purify", True)
    if not isinstance(purify, bool):
        raise APIError(
            422, "invalid_parameters", f"parameter 'purify' must be a boolean, got {purify!r}"
        )
    available = ["logits", "classifier_spikes"] + (["purifier_spikes"] if purify else [])
    wanted = wanted_outputs(infer_request, available)
    result = (await service.infer(runtime, images, purify=purify, classify=True)).result
    tensors = {
        "logits": result.logits,
        "classifier_spikes": result.classifier_spikes,
        "purifier_spikes": result.purifier_spikes,
    }
    head = {"model_name": manifest.name, "model_version": manifest.version}
    if infer_request.id is not None:
        head["id"] = infer_request.id
    return encode_response(head, [(w, tensors[w], binary) for w, binary in wanted])


@router.post(
    "/models/{name}/infer",
    response_model=InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def infer(
    name: ModelName, request: Request, service: ServiceDep, runtime: RuntimeDep
) -> Response:
    return await _infer(request, service, runtime, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def infer_version(
    name: ModelName, version: str, request: Request, service: ServiceDep, runtime: RuntimeDep
) -> Response:
    return await _infer(request, service, runtime, name, version)
