"""``POST /classify``: purify (optionally) and classify one uploaded image."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Query, UploadFile
from pydantic import BaseModel

from ..deps import RuntimeDep, ServiceDep
from .uploads import one_file, read_upload

router = APIRouter(tags=["classify"])


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    label: str
    class_index: int
    confidence: float


class Spikes(BaseModel):
    purifier: int | None
    classifier: int


class Timings(BaseModel):
    decode: float
    queue: float
    purify: float | None
    classify: float
    total: float
    batch_size: int


class ClassifyResponse(BaseModel):
    model: ModelRef
    label: str
    class_index: int
    confidence: float
    top_k: list[Prediction]
    purified: bool
    noise_level: float | None
    spikes: Spikes
    timings_ms: Timings


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


@router.post("/classify", response_model=ClassifyResponse, dependencies=[Depends(one_file)])
async def classify_image(
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP or GIF image")],
    service: ServiceDep,
    runtime: RuntimeDep,
    purify: Annotated[bool, Query(description="purify before classifying")] = True,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to list")] = 5,
) -> ClassifyResponse:
    start = time.perf_counter()
    image, decode_s = await read_upload(file, service, runtime)
    job = await service.infer(runtime, image.pixels[None], purify=purify, classify=True)
    result = job.result
    assert result.logits is not None and result.classifier_spikes is not None
    probabilities = softmax(result.logits[0].astype(np.float64))
    names = runtime.manifest.class_names
    order = np.argsort(-probabilities, kind="stable")[: min(top_k, len(names))]
    top = [
        Prediction(label=names[i], class_index=int(i), confidence=float(probabilities[i]))
        for i in order
    ]
    manifest = runtime.manifest
    return ClassifyResponse(
        model=ModelRef(name=manifest.name, version=manifest.version),
        label=top[0].label,
        class_index=top[0].class_index,
        confidence=top[0].confidence,
        top_k=top,
        purified=purify,
        noise_level=float(result.noise_level[0]) if purify else None,
        spikes=Spikes(
            purifier=int(result.purifier_spikes[0]) if purify else None,
            classifier=int(result.classifier_spikes[0]),
        ),
        timings_ms=Timings(
            decode=decode_s * 1e3,
            queue=job.queue_seconds * 1e3,
            purify=result.timings["purify"] * 1e3 if purify else None,
            classify=result.timings["classify"] * 1e3,
            total=(time.perf_counter() - start) * 1e3,
            batch_size=job.batch_size,
        ),
    )
