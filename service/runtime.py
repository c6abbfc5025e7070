"""The model directory and its ONNX Runtime sessions.

A model directory holds ``manifest.json`` and the two graphs it names (the contract:
``contract/``). Loading checks everything before a request can
see it: the manifest's fields, every file's sha256, the graphs' input and output names,
and one warm-up batch. Any failure is a ``ModelLoadError`` whose message becomes the
service's not-ready reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

import mlf_kernel
from contract import (
    GRAPH_OUTPUTS,
    IMAGE_INPUT,
    ContractError,
    Manifest,
    check_graph_io,
    load_manifest,
    verify_graph_files,
)

from .config import Settings

log = logging.getLogger("spikeguard.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(Exception):
    """The model directory cannot be served; the message says why."""


def read_manifest(model_dir: Path) -> Manifest:
    """The directory's manifest, checked against the contract."""
    try:
        return load_manifest(model_dir)
    except ContractError as exc:
        raise ModelLoadError(str(exc)) from None


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    try:
        verify_graph_files(model_dir, manifest)
    except ContractError as exc:
        raise ModelLoadError(str(exc)) from None


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


@dataclass(frozen=True)
class NeuronKernel:
    """How the graphs' MLF neurons run: ``native`` (the kernel library), ``fallback`` (the
    model-local function body, plain ONNX operators) or ``unused`` (no MLF nodes)."""

    mode: str
    reason: str
    library: str | None = None
    isa: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"mode": self.mode, "reason": self.reason, "library": self.library, "isa": self.isa}


def graphs_use_mlf(paths: list[Path]) -> bool:
    """Whether a graph imports the MLF node's domain (a node of it needs one)."""
    domain = mlf_kernel.DOMAIN.encode()
    return any(domain in path.read_bytes() for path in paths)


def neuron_kernel(
    settings: Settings, providers: list[str], options: ort.SessionOptions, paths: list[Path]
) -> NeuronKernel:
    """Registers the native kernel with ``options`` when it applies: CPU sessions only
    (it has no CUDA kernel, and TensorRT would split the graph around every custom node;
    those sessions run the function body), the library built, not switched off."""
    if not graphs_use_mlf(paths):
        return NeuronKernel("unused", "the graphs have no MLF nodes")
    if providers != [CPU]:
        return NeuronKernel("fallback", "CUDA sessions run the graphs' function body")
    if settings.mlf_kernel == "off":
        return NeuronKernel("fallback", "SPIKEGUARD_MLF_KERNEL=off")
    try:
        path = mlf_kernel.register(options)
        return NeuronKernel(
            "native", "the kernel library is registered", str(path), mlf_kernel.isa()
        )
    except mlf_kernel.KernelUnavailable as exc:
        log.warning("MLF neurons run the graphs' function body: %s", exc)
        return NeuronKernel("fallback", str(exc))


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
        paths = {role: model_dir / self.manifest.graph(role).path for role in GRAPH_OUTPUTS}
        options = session_options(settings)
        self.kernel = neuron_kernel(settings, providers, options, list(paths.values()))
        self.sessions = _open_sessions(paths, options, providers)
        # ORT falls back to CPU silently when CUDA cannot start: report what each got
        self.providers = {role: s.get_providers()[0] for role, s in self.sessions.items()}
        fell_back = CUDA in providers and any(p != CUDA for p in self.providers.values())
        if fell_back and settings.providers == "cuda":
            raise ModelLoadError(f"CUDA was requested but the sessions run on {self.providers}")
        if fell_back:
            log.warning("CUDA is installed but could not start; serving on %s", self.providers)
            # CPU sessions after all: give them the native kernel (sessions opened again)
            options = session_options(settings)
            self.kernel = neuron_kernel(settings, [CPU], options, list(paths.values()))
            if self.kernel.mode == "native":
                self.sessions = _open_sessions(paths, options, [CPU])
                self.providers = {role: CPU for role in self.sessions}

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
                None, {IMAGE_INPUT: _select(images, purify)}
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
                None, {IMAGE_INPUT: _select(classifier_input, classify)}
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


def _open_sessions(
    paths: dict[str, Path], options: ort.SessionOptions, providers: list[str]
) -> dict[str, ort.InferenceSession]:
    sessions = {}
    for role, path in paths.items():
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from None
        _check_io(role, session)
        sessions[role] = session
    return sessions


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


def _check_io(role: str, session: ort.InferenceSession) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    try:
        check_graph_io(role, inputs, outputs)
    except ContractError as exc:
        raise ModelLoadError(str(exc)) from None


def load_runtime(settings: Settings) -> Runtime:
    """Builds and warms up the runtime for ``settings.model_dir``; logs what it got."""
    start = time.perf_counter()
    runtime = Runtime(Path(settings.model_dir), settings)
    runtime.warm_up()
    log.info(
        "model %s v%s ready in %.2fs (providers %s, %d stream(s) of %d intra-op thread(s))",
        runtime.manifest.name,
        runtime.manifest.version,
        time.perf_counter() - start,
        runtime.providers,
        settings.inference_streams,
        settings.intra_op_threads,
    )
    return runtime
