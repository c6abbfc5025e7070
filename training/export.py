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
``PARITY_ATOL`` for logits and purified pixels, identical top-1, every network firing),
and the accuracies in the manifest are measured through ONNX Runtime.
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

from .checkpoint import load_model
from .data import dataset_info, load_split
from .errors import UsageError
from .models import is_classifier
from .samples import DEFAULT_SAMPLES, default_eps, write_samples
from .snn import SpikeRecorder

FORMAT_VERSION = 1
PARITY_ATOL = 1e-4
PARITY_IMAGES = 64
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
    images: int
    logits_max_abs: float
    purified_max_abs: float
    noise_level_max_abs: float
    top1_agreement: float
    purified_top1_agreement: float
    classifier_spikes_max_abs: float
    purifier_spikes_max_abs: float
    classifier_mean_spikes: float
    purifier_mean_spikes: float

    def problems(self) -> list[str]:
        out = []
        if not self.logits_max_abs < PARITY_ATOL:
            out.append(f"logits differ by {self.logits_max_abs:.3g} (limit {PARITY_ATOL:g})")
        if not self.purified_max_abs < PARITY_ATOL:
            out.append(f"purified pixels differ by {self.purified_max_abs:.3g}")
        if self.top1_agreement < 1.0 or self.purified_top1_agreement < 1.0:
            out.append(
                f"top-1 agreement {self.top1_agreement:.4f} (classifier), "
                f"{self.purified_top1_agreement:.4f} (purifier->classifier)"
            )
        if self.classifier_mean_spikes == 0 or self.purifier_mean_spikes == 0:
            out.append(
                "a network is silent in eval mode "
                f"(mean spikes/image: classifier {self.classifier_mean_spikes:g}, "
                f"purifier {self.purifier_mean_spikes:g}); was it trained?"
            )
        return out


def check_parity(
    classifier: ClassifierGraph,
    purifier: PurifierGraph,
    classifier_session,
    purifier_session,
    images: torch.Tensor,
) -> Parity:
    """Runs both graphs in PyTorch and ONNX Runtime on ``images`` and compares."""
    with torch.no_grad():
        purified, noise_level, purifier_spikes = purifier(images)
        logits, classifier_spikes = classifier(images)
        purified_logits, _ = classifier(purified)
    ort_purified, ort_noise, ort_purifier_spikes = purifier_session.run(
        None, {"image": images.numpy()}
    )
    ort_logits, ort_classifier_spikes = classifier_session.run(None, {"image": images.numpy()})
    # the second stage runs on ORT's own purified output, as the service does
    ort_purified_logits, _ = classifier_session.run(None, {"image": ort_purified})

    def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
        return float(np.max(np.abs(a.numpy() - b)))

    def agreement(a: torch.Tensor, b: np.ndarray) -> float:
        return float(np.mean(a.argmax(1).numpy() == b.argmax(1)))

    return Parity(
        images=len(images),
        logits_max_abs=max_abs(logits, ort_logits),
        purified_max_abs=max_abs(purified, ort_purified),
        noise_level_max_abs=max_abs(noise_level, ort_noise),
        top1_agreement=agreement(logits, ort_logits),
        purified_top1_agreement=agreement(purified_logits, ort_purified_logits),
        classifier_spikes_max_abs=max_abs(classifier_spikes, ort_classifier_spikes),
        purifier_spikes_max_abs=max_abs(purifier_spikes, ort_purifier_spikes),
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
    record = {
        "architecture": meta["model"],
        "model_kwargs": meta["model_kwargs"],
        "checkpoint": str(checkpoint),
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
    torch.set_grad_enabled(False)
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
        f"purified {parity['purified_max_abs']:.2g}"
    )
    return 0
