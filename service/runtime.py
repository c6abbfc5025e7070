"""The model directory and its ONNX Runtime sessions.

A model directory holds ``manifest.json`` and the two graphs it names (see
``training/export.py`` for the contract). Loading checks everything before a request can
see it: the manifest's fields, every file's sha256, the graphs' input and output names,
and one warm-up batch. Any failure is a ``ModelLoadError`` whose message becomes the
service's not-ready reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .config import Settings

log = logging.getLogger("spikeguard.runtime")

SUPPORTED_FORMAT_VERSIONS = (1,)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PURIFIER_OUTPUTS = ("purified", "noise_level", "spikes")
CLASSIFIER_OUTPUTS = ("logits", "spikes")


class ModelLoadError(Exception):
    """The model directory cannot be served; the message says why."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    dataset: str
    class_names: tuple[str, ...]
    channels: int
    height: int
    width: int
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / "manifest.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"no manifest: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"unreadable manifest {path}: {exc}") from None
    try:
        if raw["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
            raise ModelLoadError(
                f"manifest format_version {raw['format_version']!r} is not supported "
                f"(this service reads {list(SUPPORTED_FORMAT_VERSIONS)})"
            )
        shape = raw["input"]
        if shape["value_range"] != [0.0, 1.0] and shape["value_range"] != [0, 1]:
            raise ModelLoadError(f"input value_range {shape['value_range']} is not [0, 1]")
        manifest = Manifest(
            name=str(raw["name"]),
            version=str(raw["version"]),
            dataset=str(raw["dataset"]),
            class_names=tuple(str(c) for c in raw["class_names"]),
            channels=int(shape["channels"]),
            height=int(shape["height"]),
            width=int(shape["width"]),
            files={role: dict(raw["files"][role]) for role in ("purifier", "classifier")},
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid manifest {path}: missing or bad field {exc}") from None
    if manifest.channels not in (1, 3):
        raise ModelLoadError(f"manifest input channels {manifest.channels}: expected 1 or 3")
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    for role, entry in manifest.files.items():
        path = model_dir / entry["path"]
        if not path.is_file():
            raise ModelLoadError(f"{role} graph {path} is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ModelLoadError(
                f"{role} graph {path} is corrupt: sha256 {actual[:16]}... does not match "
                f"the manifest's {str(entry['sha256'])[:16]}..."
            )


def requested_providers(setting: str) -> list[str]:
    available = ort.get_available_providers()
    if setting == "cpu":
        return [CPU]
    if setting == "cuda" and CUDA not in available:
        raise ModelLoadError(
            f"SPIKEGUARD_PROVIDERS=cuda but this onnxruntime offers only {available}"
        )
    return [CUDA, CPU] if CUDA in available else [CPU]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    spinning = "1" if settings.intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return options


@dataclass
class StageResult:
    purified: np.ndarray | None = None  # [n, C, H, W]
    noise_level: np.ndarray | None = None  # [n] mean estimated noise level per image
    noise_map: np.ndarray | None = None  # [n, C, H, W] estimated noise level per pixel
    purifier_spikes: np.ndarray | None = None  # [n]
    logits: np.ndarray | None = None  # [n, K]
    classifier_spikes: np.ndarray | None = None  # [n]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the batch


class Runtime:
    """One ONNX Runtime session per graph, created once and shared by all requests."""

    def __init__(self, model_dir: Path, settings: Settings):
        self.model_dir = model_dir
        self.manifest = read_manifest(model_dir)
        verify_files(model_dir, self.manifest)
        providers = requested_providers(settings.providers)
        options = session_options(settings)
        self.sessions: dict[str, ort.InferenceSession] = {}
        for role, outputs in (("purifier", PURIFIER_OUTPUTS), ("classifier", CLASSIFIER_OUTPUTS)):
            path = model_dir / self.manifest.files[role]["path"]
            try:
                session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:  # ORT raises its own exception types for bad graphs
                raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from None
            _check_io(role, session, outputs)
            self.sessions[role] = session
        # ORT falls back to CPU silently when CUDA cannot start: report what each got
        self.providers = {role: s.get_providers()[0] for role, s in self.sessions.items()}
        fell_back = CUDA in providers and any(p != CUDA for p in self.providers.values())
        if fell_back and settings.providers == "cuda":
            raise ModelLoadError(f"CUDA was requested but the sessions run on {self.providers}")
        if fell_back:
            log.warning("CUDA is installed but could not start; serving on %s", self.providers)

    @property
    def provider(self) -> str:
        """The provider serving requests ("CUDAExecutionProvider" only if both graphs got it)."""
        return CUDA if set(self.providers.values()) == {CUDA} else CPU

    def run(self, images: np.ndarray, purify: np.ndarray, classify: np.ndarray) -> StageResult:
        """Runs a batch. ``images`` [n, C, H, W] float32 in [0, 1]; ``purify`` and
        ``classify`` are boolean masks [n] saying which images each stage sees. An image
        that is both purified and classified is classified in its purified form."""
        result = StageResult()
        classifier_input = images
        if purify.any():
            start = time.perf_counter()
            purified, noise, spikes = self.sessions["purifier"].run(
                None, {"image": _select(images, purify)}
            )
            result.timings["purify"] = time.perf_counter() - start
            result.purified = _scatter(purified, purify, fill=0.0)
            result.noise_level = _scatter(noise.reshape(len(noise), -1).mean(axis=1), purify)
            result.noise_map = _scatter(noise, purify)
            result.purifier_spikes = _scatter(spikes, purify)
            classifier_input = (
                result.purified
                if purify.all()
                else np.where(purify[:, None, None, None], result.purified, images)
            )
        if classify.any():
            start = time.perf_counter()
            logits, spikes = self.sessions["classifier"].run(
                None, {"image": _select(classifier_input, classify)}
            )
            result.timings["classify"] = time.perf_counter() - start
            result.logits = _scatter(logits, classify, fill=0.0)
            result.classifier_spikes = _scatter(spikes, classify)
        return result

    def warm_up(self, batch: int = 2) -> None:
        """One batch through both graphs: allocates ORT's buffers before the first request
        and proves the graphs run on this machine."""
        images = np.random.default_rng(0).random((batch, *self.manifest.input_shape), np.float32)
        everything = np.ones(batch, bool)
        try:
            result = self.run(images, everything, everything)
        except Exception as exc:  # a graph that loads but fails to run
            raise ModelLoadError(f"warm-up inference failed: {exc}") from None
        if result.logits is None or result.logits.shape != (batch, self.manifest.num_classes):
            shape = None if result.logits is None else result.logits.shape
            raise ModelLoadError(
                f"classifier returns logits of shape {shape}, the manifest names "
                f"{self.manifest.num_classes} classes"
            )


def _select(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of ``array`` that ``mask`` selects, without a copy when it selects all."""
    return np.ascontiguousarray(array if mask.all() else array[mask])


def _scatter(rows: np.ndarray, mask: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """``rows`` back at the positions ``mask`` selects; the others hold ``fill``."""
    if mask.all():
        return rows
    out = np.full((len(mask), *rows.shape[1:]), fill, rows.dtype)
    out[mask] = rows
    return out


def _check_io(role: str, session: ort.InferenceSession, outputs: tuple[str, ...]) -> None:
    inputs = [i.name for i in session.get_inputs()]
    got = tuple(o.name for o in session.get_outputs())
    if inputs != ["image"] or got != outputs:
        raise ModelLoadError(
            f"{role} graph has inputs {inputs} and outputs {list(got)}; "
            f"expected ['image'] and {list(outputs)}"
        )


def load_runtime(settings: Settings) -> Runtime:
    """Builds and warms up the runtime for ``settings.model_dir``; logs what it got."""
    start = time.perf_counter()
    runtime = Runtime(Path(settings.model_dir), settings)
    runtime.warm_up()
    log.info(
        "model %s v%s ready in %.2fs (providers %s, %d intra-op threads)",
        runtime.manifest.name,
        runtime.manifest.version,
        time.perf_counter() - start,
        runtime.providers,
        settings.intra_op_threads,
    )
    return runtime
