"""Open Inference Protocol (V2) inference bodies: reading, parsing and encoding.

A request body is JSON whether or not it says so (JSON is the protocol's default, and V2
client libraries send no ``Content-Type``), or, with the binary tensor data extension, a
JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors
(little-endian, row-major) of the inputs whose ``parameters.binary_data_size`` says how
many bytes they take, in input order. An output asked for with ``parameters.binary_data``
(or every output, with the request parameter ``binary_data_output``) comes back the same
way: its bytes after the JSON header, its size in its own ``binary_data_size``.

The body is counted as it arrives and refused (413) as soon as it passes its limit, before
anything is parsed: a JSON array of numbers costs tens of bytes of memory per value once
parsed, so the limit is what bounds that.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from .errors import APIError, describe_validation_errors

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
# What one FP32 value may take in a JSON body: "0.0039215688593685627, " is 23 characters.
JSON_BYTES_PER_VALUE = 24
BODY_OVERHEAD_BYTES = 64 * 1024  # the rest of the JSON: names, shapes, parameters


def default_body_limit(input_shape: tuple[int, ...], max_batch_size: int) -> int:
    """The largest V2 infer body worth reading: ``max_batch_size`` images as JSON."""
    return max_batch_size * math.prod(input_shape) * JSON_BYTES_PER_VALUE + BODY_OVERHEAD_BYTES


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(
        None, description="the values, flat or nested, row-major; absent for binary data"
    )
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
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes (a declared
    length over it before a byte is read)."""
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise APIError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {request.headers['content-encoding']!r} is not supported; "
            "send the body uncompressed",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, "too_large", f"infer body of {declared} bytes exceeds the limit of {limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "too_large", f"infer body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON part, validated, and the binary data after it."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise APIError(
                400,
                "invalid_header",
                f"{HEADER_LENGTH} {header_length!r} is not a length within the "
                f"{len(body)}-byte body",
            )
        header, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        raw = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, "invalid_json", f"the request is not valid JSON: {exc}") from None
    try:
        return InferRequest.model_validate(raw), binary
    except ValidationError as exc:
        message = describe_validation_errors(list(exc.errors()))
        raise APIError(422, "invalid_parameters", message) from None


def input_array(
    request: InferRequest, binary: bytes, expected: tuple[int, ...], max_batch: int
) -> np.ndarray:
    """The one input, ``image`` (FP32 [N, *expected], pixels in [0, 1]), as an array."""
    if len(request.inputs) != 1 or request.inputs[0].name != "image":
        names = [i.name for i in request.inputs]
        raise APIError(422, "invalid_input", f"expected one input named 'image', got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise APIError(422, "invalid_input", f"input 'image' must be FP32, got {tensor.datatype}")
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        dims = ", ".join(map(str, expected))
        raise APIError(
            422, "invalid_input", f"input 'image' has shape {tensor.shape}; expected [N, {dims}]"
        )
    if tensor.shape[0] > max_batch:
        raise APIError(
            413,
            "too_large",
            f"batch of {tensor.shape[0]} images exceeds max_batch_size {max_batch}",
        )
    needed = math.prod(tensor.shape)
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        values = _binary_values(tensor, binary_size, binary, needed)
    else:
        if binary:
            raise APIError(
                422, "invalid_input", f"{len(binary)} bytes of binary data but no binary input"
            )
        if tensor.data is None:
            raise APIError(422, "invalid_input", "input 'image' has neither data nor binary data")
        try:
            values = np.asarray(tensor.data, dtype=np.float32)
        except (TypeError, ValueError):
            raise APIError(422, "invalid_input", "input 'image' data must be numbers") from None
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


def _binary_values(tensor: InferInput, size: Any, binary: bytes, needed: int) -> np.ndarray:
    if tensor.data is not None:
        raise APIError(422, "invalid_input", "input 'image' has both data and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise APIError(
            422,
            "invalid_input",
            f"input 'image' binary_data_size {size!r} does not match the {len(binary)} bytes "
            "after the JSON header",
        )
    if size != needed * 4:
        raise APIError(
            422,
            "invalid_input",
            f"input 'image' has {size} bytes of binary data; shape {tensor.shape} in FP32 "
            f"needs {needed * 4}",
        )
    return np.frombuffer(binary, dtype="<f4").astype(np.float32)


def wanted_outputs(request: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """The outputs to send, each with whether it goes as binary data."""
    default_binary = (request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise APIError(
            422, "invalid_parameters", "parameter 'binary_data_output' must be a boolean"
        )
    if not request.outputs:
        return [(name, default_binary) for name in available]
    wanted = []
    for output in request.outputs:
        if output.name not in available:
            raise APIError(
                422, "invalid_output", f"unknown output {output.name!r}; available: {available}"
            )
        parameters = output.parameters or {}
        if parameters.get("classification"):
            raise APIError(422, "invalid_output", "the classification extension is not supported")
        binary = parameters.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise APIError(
                422, "invalid_output", f"output {output.name!r}: binary_data must be a boolean"
            )
        wanted.append((output.name, binary))
    return wanted


def encode_response(head: dict[str, Any], outputs: list[tuple[str, np.ndarray, bool]]) -> Response:
    """``head`` (model_name, model_version, id) and the outputs, each FP32, as JSON, or as
    a JSON header and the binary outputs after it when any is binary."""
    described, blobs = [], []
    for name, array, binary in outputs:
        output: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": "FP32"}
        if binary:
            blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = array.astype(np.float32).ravel().tolist()
        described.append(output)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place, for an OpenAPI
    operation that reads its body itself."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
