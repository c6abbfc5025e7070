"""``python -m training export``: purifier + classifier checkpoints -> a model directory
(``manifest.json``, ``purifier.onnx``, ``classifier.onnx``) that the service loads, with
``--samples N`` test images and adversarial versions of them for the demo page
(``samples/``, see ``training/samples.py``).

Graph contract (the service depends on it; batch axis dynamic):

* ``purifier.onnx``: ``image`` float32 [N, C, H, W] in [0, 1] -> ``purified`` [N, C, H, W],
  ``noise_level`` [N, C, H, W], ``spikes`` [N] (total spikes per image).
* ``classifier.onnx``: ``image`` float32 [N, C, H, W] in [0, 1] -> ``logits`` [N, K],
  ``spikes`` [N]. Normalisation is inside the graph.

Graphs come from the ``torch.export``-based exporter (``dynamo=True``); the TorchScript
exporter bakes the example's batch size into the neurons' zero-initialised membranes and
cannot give a dynamic batch axis. An export checks itself before anything is written:
ONNX Runtime must reproduce PyTorch on real test images (max abs difference below
``PARITY_ATOL`` for logits and purified pixels, and identical top-1, on every image whose
spike counts agree; threshold flips on at most a few percent of images; every network
firing; see ``Parity``), and the accuracies in the manifest are measured through ONNX
Runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model, resolve_checkpoint
from .data import dataset_info, load_split
from .errors import UsageError
from .models import is_classifier
from .samples import DEFAULT_SAMPLES, default_eps, write_samples
from .snn import SpikeRecorder

FORMAT_VERSION = 1
PARITY_ATOL = 1e-4
PARITY_IMAGES = 256
MAX_FLIP_FRACTION = 0.05
OPSET = 18

PURIFIER_OUTPUTS = ("purified", "noise_level", "spikes")
CLASSIFIER_OUTPUTS = ("logits", "spikes")


# --------------------------------------------------------------------------- graph wrappers


class _SpikeCounter(SpikeRecorder):
    """A ``SpikeRecorder`` that keeps only the per-image counts: the firing-rate hook
    converts a tensor to a Python float, which ``torch.export`` cannot trace."""

    def _hook(self, name: str):
        def hook(_module, _inputs, output: torch.Tensor) -> None:
            dims = [0] + list(range(2, output.dim()))
            self.per_image.append(output.sum(dim=dims))

        return hook


class ClassifierGraph(nn.Module):
    """``image -> (logits, spikes)``: the classifier plus its per-image spike count."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.recorder = _SpikeCounter(classifier)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.recorder.reset()
        logits = self.classifier(image)
        return logits, self.recorder.total()


class PurifierGraph(nn.Module):
    """``image -> (purified, noise_level, spikes)``."""

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.recorder = _SpikeCounter(purifier)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.recorder.reset()
        purified, noise_level = self.purifier(image)
        return purified, noise_level, self.recorder.total()


def export_onnx(graph: nn.Module, example: torch.Tensor, path: Path, outputs: tuple[str, ...]):
    """Exports ``graph`` (input ``image``, a dynamic batch axis) to one self-contained file."""
    graph.eval()
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the exporter narrates its progress on stdout; keep the command's output readable
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=["image"],
                output_names=list(outputs),
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
            )


# --------------------------------------------------------------------------- checking


def ort_session(path: Path):
    """A CPU session with the optimisation level the service uses, so parity is checked
    on the graph as it will really run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Parity:
    """ONNX Runtime against PyTorch on the same images.

    A spiking network is discontinuous: ORT's kernels sum in another order than PyTorch's,
    and a membrane potential within rounding error of a threshold fires in one and not in
    the other. Such an image then differs by far more than rounding (a whole spike's worth)
    and its spike count differs too. So the tolerance applies to every image whose spike
    counts agree, while images with a threshold flip are counted and capped: an export bug
    (a wrong constant, a baked-in shape, a missing op) shows on most images, a flip on a
    fraction of a percent."""

    images: int
    flipped: int  # images whose spike count differs in some network
    logits_max_abs: float  # over images without a flip in the classifier
    purified_max_abs: float  # over images without a flip in the purifier
    noise_level_max_abs: float  # likewise
    logits_max_abs_all: float  # over all images, flips included
    purified_max_abs_all: float
    top1_agreement: float  # all images
    purified_top1_agreement: float  # purifier -> classifier, all images
    top1_disagreements_without_flip: int
    classifier_mean_spikes: float
    purifier_mean_spikes: float

    def problems(self) -> list[str]:
        out = []
        if not self.logits_max_abs < PARITY_ATOL:
            out.append(
                f"logits differ by {self.logits_max_abs:.3g} (limit {PARITY_ATOL:g}) on an "
                "image with identical spike counts"
            )
        if not self.purified_max_abs < PARITY_ATOL:
            out.append(
                f"purified pixels differ by {self.purified_max_abs:.3g} (limit {PARITY_ATOL:g})"
                " on an image with identical spike counts"
            )
        if self.flipped > MAX_FLIP_FRACTION * self.images:
            out.append(
                f"spike counts differ on {self.flipped} of {self.images} images (more than "
                f"{MAX_FLIP_FRACTION:.0%}: not threshold rounding)"
            )
        if self.top1_disagreements_without_flip:
            out.append(
                f"top-1 differs on {self.top1_disagreements_without_flip} images with "
                f"identical spike counts (agreement {self.top1_agreement:.4f} classifier, "
                f"{self.purified_top1_agreement:.4f} purifier->classifier)"
            )
        if self.classifier_mean_spikes == 0 or self.purifier_mean_spikes == 0:
            out.append(
                "a network is silent in eval mode "
                f"(mean spikes/image: classifier {self.classifier_mean_spikes:g}, "
                f"purifier {self.purifier_mean_spikes:g}); was it trained?"
            )
        return out


def _torch_outputs(
    classifier: ClassifierGraph, purifier: PurifierGraph, images: torch.Tensor, batch: int
) -> list[np.ndarray]:
    """purified, noise_level, purifier spikes, logits, classifier spikes, and the logits
    and classifier spikes on the purified images, batch by batch."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            purified, noise_level, purifier_spikes = purifier(x)
            logits, classifier_spikes = classifier(x)
            purified_logits, purified_spikes = classifier(purified)
            parts.append(
                [purified, noise_level, purifier_spikes, logits, classifier_spikes]
                + [purified_logits, purified_spikes]
            )
    return [torch.cat(column).numpy() for column in zip(*parts, strict=True)]


def _ort_outputs(
    classifier_session, purifier_session, images: torch.Tensor, batch: int
) -> list[np.ndarray]:
    """The same through ORT; the second stage runs on ORT's own purified output, as the
    service does."""
    parts = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].numpy()
        purified, noise_level, purifier_spikes = purifier_session.run(None, {"image": x})
        logits, classifier_spikes = classifier_session.run(None, {"image": x})
        purified_logits, purified_spikes = classifier_session.run(None, {"image": purified})
        parts.append(
            [purified, noise_level, purifier_spikes, logits, classifier_spikes]
            + [purified_logits, purified_spikes]
        )
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def check_parity(
    classifier: ClassifierGraph,
    purifier: PurifierGraph,
    classifier_session,
    purifier_session,
    images: torch.Tensor,
    batch: int = 64,
) -> Parity:
    """Runs both graphs in PyTorch and ONNX Runtime on ``images`` and compares."""
    reference = _torch_outputs(classifier, purifier, images, batch)
    exported = _ort_outputs(classifier_session, purifier_session, images, batch)
    purified, noise, purifier_spikes, logits, classifier_spikes, chain_logits, chain_spikes = (
        reference
    )
    (
        ort_purified,
        ort_noise,
        ort_purifier_spikes,
        ort_logits,
        ort_classifier_spikes,
        ort_chain_logits,
        ort_chain_spikes,
    ) = exported
    n = len(images)

    def per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b).reshape(n, -1).max(axis=1)

    purifier_flip = purifier_spikes != ort_purifier_spikes
    classifier_flip = classifier_spikes != ort_classifier_spikes
    chain_flip = purifier_flip | (chain_spikes != ort_chain_spikes)
    top1 = logits.argmax(1) == ort_logits.argmax(1)
    chain_top1 = chain_logits.argmax(1) == ort_chain_logits.argmax(1)

    def worst(diff: np.ndarray, flip: np.ndarray) -> float:
        return float(diff[~flip].max(initial=0.0))

    logits_diff = per_image(logits, ort_logits)
    purified_diff = per_image(purified, ort_purified)
    return Parity(
        images=n,
        flipped=int((purifier_flip | classifier_flip | chain_flip).sum()),
        logits_max_abs=worst(logits_diff, classifier_flip),
        purified_max_abs=worst(purified_diff, purifier_flip),
        noise_level_max_abs=worst(per_image(noise, ort_noise), purifier_flip),
        logits_max_abs_all=float(logits_diff.max()),
        purified_max_abs_all=float(purified_diff.max()),
        top1_agreement=float(top1.mean()),
        purified_top1_agreement=float(chain_top1.mean()),
        top1_disagreements_without_flip=int(
            (~top1 & ~classifier_flip).sum() + (~chain_top1 & ~chain_flip).sum()
        ),
        classifier_mean_spikes=float(classifier_spikes.mean()),
        purifier_mean_spikes=float(purifier_spikes.mean()),
    )


def ort_accuracy(
    classifier_session, purifier_session, images: torch.Tensor, labels: torch.Tensor, batch: int
) -> dict[str, float]:
    """Clean accuracy of the classifier alone and of purifier -> classifier, through ORT."""
    correct = correct_purified = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].numpy()
        y = labels[start : start + batch].numpy()
        (logits, _) = classifier_session.run(None, {"image": x})
        purified = purifier_session.run(["purified"], {"image": x})[0]
        (purified_logits, _) = classifier_session.run(None, {"image": purified})
        correct += int((logits.argmax(1) == y).sum())
        correct_purified += int((purified_logits.argmax(1) == y).sum())
    n = len(images)
    return {
        "eval_images": n,
        "clean_accuracy": correct / n,
        "purified_clean_accuracy": correct_purified / n,
    }


# --------------------------------------------------------------------------- writing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _neuron_settings(model: nn.Module) -> dict[str, Any]:
    neurons = model.neurons
    return {
        "timesteps": neurons.timesteps,
        "thresholds": list(neurons.thresholds),
        "decay": neurons.decay,
    }


def _model_record(meta: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    path = resolve_checkpoint(checkpoint)
    record = {
        "architecture": meta["model"],
        "model_kwargs": meta["model_kwargs"],
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path),
    }
    record.update({k: v for k, v in meta.items() if k not in ("model", "model_kwargs", "config")})
    return record


def _install(staging: Path, out: Path, force: bool) -> None:
    """Moves the finished ``staging`` directory to ``out``; an existing ``out`` is swapped
    out (renames only) and then deleted, so readers see the old or the new model."""
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
) -> dict[str, Any]:
    """Exports, verifies and installs a model directory; returns the manifest.

    Raises ``UsageError`` (nothing written) when the checkpoints do not fit together, the
    output exists without ``force``, or ONNX Runtime does not reproduce PyTorch."""
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if eval_images < 1:
        raise UsageError(f"--eval-images must be >= 1, got {eval_images}")
    if samples < 0 or not (samples_eps is None or 0 < samples_eps <= 1):
        raise UsageError(
            f"--samples must be >= 0 and --samples-eps in (0, 1], got {samples}, {samples_eps}"
        )
    try:
        classifier, classifier_meta = load_model(classifier_path)
        purifier, purifier_meta = load_model(purifier_path)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load checkpoint: {exc}") from None
    if not is_classifier(classifier_meta["model"]):
        raise UsageError(f"--classifier holds a {classifier_meta['model']!r}, not a classifier")
    if is_classifier(purifier_meta["model"]):
        raise UsageError(f"--purifier holds a {purifier_meta['model']!r}, not a purifier")
    if classifier.in_channels != purifier.in_channels:
        raise UsageError(
            f"channel mismatch: classifier takes {classifier.in_channels}, "
            f"purifier {purifier.in_channels}"
        )
    dataset = dataset or classifier_meta.get("dataset") or purifier_meta.get("dataset")
    if dataset is None:
        raise UsageError("the checkpoints name no dataset; pass --dataset")
    try:
        info = dataset_info(dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if info.num_classes != classifier.num_classes or info.in_channels != classifier.in_channels:
        raise UsageError(
            f"the classifier ({classifier.in_channels} channels, {classifier.num_classes} "
            f"classes) does not fit {dataset} ({info.in_channels}, {info.num_classes})"
        )
    test = load_split(dataset, train=False, data_dir=data_dir).first(eval_images)
    images, labels = test.float_images(), test.labels

    classifier_graph = ClassifierGraph(classifier).eval()
    purifier_graph = PurifierGraph(purifier).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        example = images[:2]
        export_onnx(purifier_graph, example, staging / "purifier.onnx", PURIFIER_OUTPUTS)
        export_onnx(classifier_graph, example, staging / "classifier.onnx", CLASSIFIER_OUTPUTS)
        classifier_session = ort_session(staging / "classifier.onnx")
        purifier_session = ort_session(staging / "purifier.onnx")
        parity = check_parity(
            classifier_graph,
            purifier_graph,
            classifier_session,
            purifier_session,
            images[:PARITY_IMAGES],
        )
        if parity.problems():
            raise UsageError("ONNX export failed verification: " + "; ".join(parity.problems()))
        metrics = ort_accuracy(classifier_session, purifier_session, images, labels, batch_size)
        if robust_metrics:
            metrics["robust"] = robust_metrics
        manifest = build_manifest(
            staging,
            name=name or out.name,
            version=version,
            dataset=dataset,
            class_names=list(info.class_names),
            image_size=(info.image_size, info.image_size),
            classifier=(classifier, classifier_meta, Path(classifier_path)),
            purifier=(purifier, purifier_meta, Path(purifier_path)),
            metrics=metrics,
            parity=parity,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if samples:
            # fresh models: the graph wrappers above hooked spike recorders onto theirs
            manifest["samples"] = write_samples(
                staging,
                load_model(classifier_path)[0],
                load_model(purifier_path)[0],
                dataset,
                n=samples,
                eps=samples_eps or default_eps(purifier_meta, classifier_meta),
                data_dir=data_dir,
            )
        _install(staging, out, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def build_manifest(
    directory: Path,
    *,
    name: str,
    version: str,
    dataset: str,
    class_names: list[str],
    image_size: tuple[int, int],
    classifier: tuple[nn.Module, dict[str, Any], Path],
    purifier: tuple[nn.Module, dict[str, Any], Path],
    metrics: dict[str, Any],
    parity: Parity,
) -> dict[str, Any]:
    classifier_model, classifier_meta, classifier_path = classifier
    purifier_model, purifier_meta, purifier_path = purifier
    channels = classifier_model.in_channels
    normalize = classifier_model.normalize

    def file_entry(filename: str, outputs: tuple[str, ...]) -> dict[str, Any]:
        path = directory / filename
        return {
            "path": filename,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": ["image"],
            "outputs": list(outputs),
        }

    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": dataset,
        "class_names": class_names,
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NCHW",
            "channels": channels,
            "height": image_size[0],
            "width": image_size[1],
            "value_range": [0.0, 1.0],
        },
        "normalization": {
            "inside_graph": True,
            "note": "classifier.onnx normalises internally; feed pixels in [0, 1]",
            "mean": normalize.mean.flatten().tolist(),
            "std": normalize.std.flatten().tolist(),
        },
        "neurons": _neuron_settings(classifier_model),
        "files": {
            "purifier": file_entry("purifier.onnx", PURIFIER_OUTPUTS),
            "classifier": file_entry("classifier.onnx", CLASSIFIER_OUTPUTS),
        },
        "models": {
            "classifier": {
                **_model_record(classifier_meta, classifier_path),
                "neurons": _neuron_settings(classifier_model),
            },
            "purifier": {
                **_model_record(purifier_meta, purifier_path),
                "neurons": _neuron_settings(purifier_model),
            },
        },
        "training": {
            "classifier": classifier_meta.get("config"),
            "purifier": purifier_meta.get("config"),
        },
        "metrics": metrics,
        "export": {
            "torch": torch.__version__,
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": OPSET,
            "parity": vars(parity) | {"atol": PARITY_ATOL},
        },
    }


# --------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--classifier", required=True, help="classifier checkpoint or run dir")
    parser.add_argument("--purifier", required=True, help="purifier checkpoint or run dir")
    parser.add_argument("--out", required=True, help="model directory to write (models/<name>)")
    parser.add_argument("--name", help="model name (default: the --out directory's name)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    parser.add_argument("--dataset", help="dataset (default: the checkpoints' own)")
    parser.add_argument("--data-dir", help="dataset directory (default: the dataset's own)")
    parser.add_argument(
        "--eval-images", type=int, default=1000, help="test images for the accuracies"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--metrics-json", help="robust accuracies from the evaluation, stored in the manifest"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"test images stored with adversarial versions for the demo page (default "
        f"{DEFAULT_SAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--samples-eps",
        type=float,
        help="L-inf budget of the samples' attacks (default: the checkpoints' eval_eps)",
    )


def run(args: argparse.Namespace) -> int:
    robust = None
    if args.metrics_json:
        try:
            robust = json.loads(Path(args.metrics_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--metrics-json: {exc}") from None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    with torch.no_grad():  # scoped: export runs in-process from tests and other commands
        manifest = export_model(
            args.classifier,
            args.purifier,
            args.out,
            name=args.name,
            version=args.version,
            dataset=args.dataset,
            data_dir=args.data_dir,
            eval_images=args.eval_images,
            batch_size=args.batch_size,
            robust_metrics=robust,
            force=args.force,
            samples=args.samples,
            samples_eps=args.samples_eps,
        )
    metrics, parity = manifest["metrics"], manifest["export"]["parity"]
    print(
        f"exported {manifest['name']} v{manifest['version']} to {args.out}: "
        f"clean accuracy {metrics['clean_accuracy']:.4f}, purified "
        f"{metrics['purified_clean_accuracy']:.4f} on {metrics['eval_images']} test images; "
        f"ORT vs PyTorch max |diff| logits {parity['logits_max_abs']:.2g}, "
        f"purified {parity['purified_max_abs']:.2g}; threshold flips on {parity['flipped']} "
        f"of {parity['images']} images"
    )
    return 0
