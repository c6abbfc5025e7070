"""``export_model``: checkpoints -> a verified, installed model directory.

The steps, each in its own module: the graphs are built and exported (``graphs``), ONNX
Runtime is checked against PyTorch and the accuracies measured (``parity``), the demo
samples are written (``training/samples``) with the weights (weights-only safetensors, so
anyone can attack exactly the served model), and then — once, with everything it lists in
place — the manifest (``contract.Manifest``). All of it happens in a staging directory
beside ``out`` that replaces ``out`` by renames, so a reader sees the old model or the new
one, never half of either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract import (
    FORMAT_VERSION,
    GRAPH_FILES,
    GRAPH_OUTPUTS,
    IMAGE_INPUT,
    WEIGHT_FILES,
    Manifest,
    SampleRecord,
    make_shareable,
    sha256_file,
    write_manifest,
)

from ..checkpoint import load_model, resolve_checkpoint, save_checkpoint
from ..data import DatasetInfo, dataset_info, load_split
from ..errors import UsageError
from ..models import is_classifier
from ..samples import default_eps, write_samples
from .graphs import EXPORTER, OPSET, ClassifierGraph, PurifierGraph, export_graph
from .parity import (
    PARITY_ATOL,
    PARITY_IMAGES,
    Parity,
    check_parity,
    native_matches_function,
    ort_accuracy,
    ort_session,
)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its metadata and where it came from."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @classmethod
    def load(cls, path: str | os.PathLike, flag: str) -> Checkpoint:
        try:
            resolved = resolve_checkpoint(path)
            model, meta = load_model(resolved)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot load checkpoint: {exc}") from None
        if is_classifier(meta["model"]) != (flag == "--classifier"):
            kind = "classifier" if flag == "--classifier" else "purifier"
            raise UsageError(f"{flag} holds a {meta['model']!r}, not a {kind}")
        return cls(model, meta, resolved)

    def bundle(self, directory: Path, role: str) -> Path:
        """Writes the weights (no optimizer state) as ``directory/<role>.safetensors``."""
        path = directory / WEIGHT_FILES[role]
        meta = {k: v for k, v in self.meta.items() if k not in ("model", "model_kwargs")}
        meta = {**meta, "source_checkpoint": str(self.path)}
        save_checkpoint(path, self.model, meta)
        return path

    def record(self, bundled: Path) -> dict[str, Any]:
        """The manifest's ``models.<role>`` entry for the weights bundled at ``bundled``."""
        meta = self.meta
        return {
            "architecture": meta["model"],
            "model_kwargs": meta["model_kwargs"],
            "checkpoint": bundled.name,
            "checkpoint_sha256": sha256_file(bundled),
            "checkpoint_bytes": bundled.stat().st_size,
            "source_checkpoint": str(self.path),
            "source_checkpoint_sha256": sha256_file(self.path),
            **{k: v for k, v in meta.items() if k not in ("model", "model_kwargs", "config")},
            "neurons": neuron_settings(self.model),
        }


def neuron_settings(model: nn.Module) -> dict[str, Any]:
    neurons = model.neurons
    return {
        "timesteps": neurons.timesteps,
        "thresholds": list(neurons.thresholds),
        "decay": neurons.decay,
    }


def matching_dataset(classifier: Checkpoint, purifier: Checkpoint, dataset: str | None):
    """The dataset both checkpoints fit (``dataset`` or the one they name)."""
    if classifier.model.in_channels != purifier.model.in_channels:
        raise UsageError(
            f"channel mismatch: classifier takes {classifier.model.in_channels}, "
            f"purifier {purifier.model.in_channels}"
        )
    dataset = dataset or classifier.meta.get("dataset") or purifier.meta.get("dataset")
    if dataset is None:
        raise UsageError("the checkpoints name no dataset; pass --dataset")
    try:
        info = dataset_info(dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model = classifier.model
    if info.num_classes != model.num_classes or info.in_channels != model.in_channels:
        raise UsageError(
            f"the classifier ({model.in_channels} channels, {model.num_classes} "
            f"classes) does not fit {dataset} ({info.in_channels}, {info.num_classes})"
        )
    return info


def build_manifest(
    directory: Path,
    *,
    name: str,
    version: str,
    info: DatasetInfo,
    classifier: Checkpoint,
    purifier: Checkpoint,
    metrics: dict[str, Any],
    parity: Parity,
    samples: list[SampleRecord],
) -> Manifest:
    """The manifest of the graphs in ``directory`` (hashed here) and where they came from.
    Its length is the manifest's document spelt out field by field, one place to read it."""
    normalize = classifier.model.normalize

    def file_entry(role: str) -> dict[str, Any]:
        path = directory / GRAPH_FILES[role]
        return {
            "path": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": [IMAGE_INPUT],
            "outputs": list(GRAPH_OUTPUTS[role]),
        }

    document = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": info.name,
        "class_names": list(info.class_names),
        "input": {
            "name": IMAGE_INPUT,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": classifier.model.in_channels,
            "height": info.image_size,
            "width": info.image_size,
            "value_range": [0.0, 1.0],
        },
        "normalization": {
            "inside_graph": True,
            "note": "classifier.onnx normalises internally; feed pixels in [0, 1]",
            "mean": normalize.mean.flatten().tolist(),
            "std": normalize.std.flatten().tolist(),
        },
        "neurons": neuron_settings(classifier.model),
        "files": {"purifier": file_entry("purifier"), "classifier": file_entry("classifier")},
        "models": {
            role: checkpoint.record(directory / WEIGHT_FILES[role])
            for role, checkpoint in (("classifier", classifier), ("purifier", purifier))
        },
        "training": {
            "classifier": classifier.meta.get("config"),
            "purifier": purifier.meta.get("config"),
        },
        "metrics": metrics,
        "export": {
            "torch": torch.__version__,
            "exporter": EXPORTER,
            "opset": OPSET,
            "parity": vars(parity) | {"atol": PARITY_ATOL},
        },
    }
    if samples:
        document["samples"] = [sample.to_json() for sample in samples]
    return Manifest.model_validate(document)


def install(staging: Path, out: Path, force: bool) -> None:
    """Moves the finished ``staging`` directory to ``out``; an existing ``out`` is swapped
    out (renames only) and then deleted, so readers see the old or the new model. The
    directory gets ordinary permissions first (the staging one is owner-only)."""
    make_shareable(staging)
    if not out.exists():
        os.replace(staging, out)
        return
    if not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, retired / out.name)
    os.replace(staging, out)
    shutil.rmtree(retired)


def export_model(
    classifier_path: str | os.PathLike,
    purifier_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    version: str = "1",
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    eval_images: int = 1000,
    batch_size: int = 100,
    robust_metrics: dict[str, Any] | None = None,
    force: bool = False,
    samples: int = 0,
    samples_eps: float | None = None,
) -> Manifest:
    """Exports, verifies and installs a model directory; returns the manifest.

    Raises ``UsageError`` (nothing written) when the checkpoints do not fit together, the
    output exists without ``force``, or ONNX Runtime does not reproduce PyTorch. The steps
    stay in one function, in order, inside the one ``try`` that removes the staging
    directory whatever fails; each step is a call into ``graphs``, ``parity``, samples or
    the manifest."""
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if eval_images < 1:
        raise UsageError(f"--eval-images must be >= 1, got {eval_images}")
    if samples < 0 or not (samples_eps is None or 0 < samples_eps <= 1):
        raise UsageError(
            f"--samples must be >= 0 and --samples-eps in (0, 1], got {samples}, {samples_eps}"
        )
    classifier = Checkpoint.load(classifier_path, "--classifier")
    purifier = Checkpoint.load(purifier_path, "--purifier")
    info = matching_dataset(classifier, purifier, dataset)
    test = load_split(info.name, train=False, data_dir=data_dir).first(eval_images)
    images, labels = test.float_images(), test.labels

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        with ClassifierGraph(classifier.model) as c_graph, PurifierGraph(purifier.model) as p_graph:
            for graph in (p_graph, c_graph):
                export_graph(graph, images[:2], staging / GRAPH_FILES[graph.role])
            c_session = ort_session(staging / GRAPH_FILES["classifier"])
            p_session = ort_session(staging / GRAPH_FILES["purifier"])
            parity = check_parity(c_graph, p_graph, c_session, p_session, images[:PARITY_IMAGES])
        problems = parity.problems() + native_matches_function(
            [staging / GRAPH_FILES[role] for role in ("purifier", "classifier")],
            images[:PARITY_IMAGES],
        )
        if problems:
            raise UsageError("ONNX export failed verification: " + "; ".join(problems))
        classifier.bundle(staging, "classifier")
        purifier.bundle(staging, "purifier")
        metrics = ort_accuracy(c_session, p_session, images, labels, batch_size)
        if robust_metrics:
            metrics["robust"] = robust_metrics
        records = []
        if samples:
            eps = samples_eps or default_eps(purifier.meta, classifier.meta)
            records = write_samples(
                staging, classifier.model, purifier.model, info.name, n=samples, eps=eps,
                data_dir=data_dir,
            )  # fmt: skip
        manifest = build_manifest(
            staging, name=name or out.name, version=version, info=info, classifier=classifier,
            purifier=purifier, metrics=metrics, parity=parity, samples=records,
        )  # fmt: skip
        write_manifest(staging, manifest)
        install(staging, out, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest
