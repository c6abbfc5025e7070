"""Open Inference Protocol (KServe V2) REST endpoints, so standard V2 clients work.

The served model takes ``image`` (FP32 ``[-1, C, H, W]``, pixels in [0, 1]) and returns
``logits`` (FP32 ``[-1, K]``), ``classifier_spikes`` and ``purifier_spikes`` (FP32
``[-1]``). The request parameter ``purify`` (default true) skips the purifier when false;
``purifier_spikes`` is then not an output.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..deps import RuntimeDep, ServiceDep
from ..errors import APIError, error_response
from ..runtime import Runtime

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


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


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
    )


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "spikeguard", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    if not service.ready:
        return error_response(503, "not_ready", f"{service.status}: {service.reason}")
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


def _image_tensor(request: InferRequest, runtime: Runtime, max_batch: int) -> np.ndarray:
    if len(request.inputs) != 1 or request.inputs[0].name != "image":
        names = [i.name for i in request.inputs]
        raise APIError(422, "invalid_input", f"expected one input named 'image', got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise APIError(422, "invalid_input", f"input 'image' must be FP32, got {tensor.datatype}")
    expected = runtime.manifest.input_shape
    dims = ", ".join(map(str, expected))
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise APIError(
            422,
            "invalid_input",
            f"input 'image' has shape {tensor.shape}; expected [N, {dims}]",
        )
    if tensor.shape[0] > max_batch:
        raise APIError(
            413,
            "too_large",
            f"batch of {tensor.shape[0]} images exceeds max_batch_size {max_batch}",
        )
    try:
        values = np.asarray(tensor.data, dtype=np.float32)
    except (TypeError, ValueError):
        raise APIError(422, "invalid_input", "input 'image' data must be numbers") from None
    needed = int(np.prod(tensor.shape))
    if values.size != needed:
        raise APIError(
            422,
            "invalid_input",
            f"input 'image' holds {values.size} values; shape {tensor.shape} needs {needed}",
        )
    values = values.reshape(tensor.shape)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise APIError(422, "invalid_input", "input 'image' pixels must be finite and in [0, 1]")
    return values


@router.post("/models/{name}/infer", response_model=InferResponse, response_model_exclude_none=True)
async def infer(
    name: ModelName,
    request: Annotated[InferRequest, Body()],
    service: ServiceDep,
    runtime: RuntimeDep,
) -> InferResponse:
    _model(runtime, name)
    images = _image_tensor(request, runtime, service.settings.max_batch_size)
    purify = (request.parameters or {}).get("purify", True)
    if not isinstance(purify, bool):
        raise APIError(
            422, "invalid_parameters", f"parameter 'purify' must be a boolean, got {purify!r}"
        )
    available = ["logits", "classifier_spikes"] + (["purifier_spikes"] if purify else [])
    wanted = [o.name for o in request.outputs] if request.outputs else available
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise APIError(422, "invalid_output", f"unknown outputs {unknown}; available: {available}")
    job = await service.infer(runtime, images, purify=purify, classify=True)
    result = job.result
    n = len(images)
    tensors = {
        "logits": (result.logits, [n, runtime.manifest.num_classes]),
        "classifier_spikes": (result.classifier_spikes, [n]),
        "purifier_spikes": (result.purifier_spikes, [n]),
    }
    outputs = [
        InferOutput(
            name=w, shape=tensors[w][1], datatype="FP32", data=tensors[w][0].ravel().tolist()
        )
        for w in wanted
    ]
    return InferResponse(
        model_name=runtime.manifest.name,
        model_version=runtime.manifest.version,
        id=request.id,
        outputs=outputs,
    )
