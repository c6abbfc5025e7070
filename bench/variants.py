"""The three forms of the bundled model's graphs that ``bench/run.py`` compares.

* ``unrolled``: today's export, every MLF neuron a loop of plain operators per step;
* ``function``: one ``ai.spikeguard::MLF`` node per neuron, run by ONNX Runtime through the
  model-local function the file carries (any runtime without the kernel library);
* ``native``: the same file with the kernel library registered (``mlf_kernel``).

Where the graphs come from, in order (``prepare``):

1. the bundle's safetensors weights, when it ships them: exported unrolled here, then fused;
2. the bundle's ONNX files, when they are the unrolled export: fused here;
3. otherwise ``--checkpoints DIR`` (``classifier.safetensors``, ``purifier.safetensors``).

``Source.description`` says which, for the report. PyTorch figures need weights (1 or 3).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROLES = ("purifier", "classifier")
VARIANTS = ("unrolled", "function", "native")


@dataclass
class Source:
    description: str
    unrolled: dict[str, Path]
    fused: dict[str, Path]
    checkpoints: dict[str, Path] | None = None
    fused_neurons: dict[str, int] = field(default_factory=dict)

    def graph(self, variant: str, role: str) -> Path:
        return self.unrolled[role] if variant == "unrolled" else self.fused[role]


def _bundle_checkpoints(model_dir: Path, manifest: dict) -> dict[str, Path] | None:
    """Safetensors weights in the bundle: the manifest's record, else ``<role>.safetensors``."""
    found = {}
    for role in ROLES:
        record = manifest.get("models", {}).get(role, {})
        candidates = [
            model_dir / str(record.get("checkpoint", "")),
            model_dir / f"{role}.safetensors",
        ]
        candidates = [c for c in candidates if c.suffix == ".safetensors" and c.is_file()]
        if not candidates:
            return None
        found[role] = candidates[0]
    return found


def _is_unrolled(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return not any(n.op_type == "MLF" for n in model.graph.node)


def _export_unrolled(
    checkpoints: dict[str, Path], out: Path, size: tuple[int, int]
) -> dict[str, Path]:
    """Today's export of each checkpoint (the exporter's unrolled neurons, no fusion)."""
    import torch

    from training.checkpoint import load_model
    from training.export import ClassifierGraph, PurifierGraph, export_graph

    paths = {}
    for role, checkpoint in checkpoints.items():
        model, _ = load_model(checkpoint)
        example = torch.rand(2, model.in_channels, *size)
        paths[role] = out / f"{role}.unrolled.onnx"
        with (PurifierGraph if role == "purifier" else ClassifierGraph)(model.eval()) as graph:
            export_graph(graph, example, paths[role], neurons="unrolled")
    return paths


def prepare(model_dir: Path, work: Path, checkpoints: Path | None = None) -> Source:
    import onnx

    from mlf_kernel.fuse import fuse_neurons

    manifest = json.loads((model_dir / "manifest.json").read_text())
    bundled = {r: model_dir / manifest["files"][r]["path"] for r in ROLES}
    weights = _bundle_checkpoints(model_dir, manifest)
    size = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
    if weights is not None:
        unrolled = _export_unrolled(weights, work, size)
        description = (
            f"the bundle's weights ({model_dir.name}: {', '.join(map(str, weights.values()))})"
        )
    elif all(_is_unrolled(p) for p in bundled.values()):
        unrolled, weights = bundled, None
        description = (
            f"the bundle's ONNX files ({model_dir.name} v{manifest.get('version')}, unrolled "
            "export; the bundle has no weights, so no PyTorch figures)"
        )
    elif checkpoints is not None:
        weights = {r: checkpoints / f"{r}.safetensors" for r in ROLES}
        unrolled = _export_unrolled(weights, work, size)
        description = f"checkpoints in {checkpoints}"
    else:
        raise SystemExit(
            f"{model_dir} ships neither weights nor unrolled graphs; pass --checkpoints DIR "
            "with classifier.safetensors and purifier.safetensors"
        )
    fused, counts = {}, {}
    for role in ROLES:
        model, counts[role] = fuse_neurons(onnx.load(str(unrolled[role])))
        fused[role] = work / f"{role}.fused.onnx"
        onnx.save(model, str(fused[role]))
    return Source(description, unrolled, fused, weights, counts)


def fused_model_dir(model_dir: Path, source: Source, out: Path) -> Path:
    """A copy of the bundle serving the fused graphs (manifest hashes updated), for the
    service runs."""
    from contract import sha256_file

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    for role in ROLES:
        target = out / manifest["files"][role]["path"]
        shutil.copyfile(source.fused[role], target)
        manifest["files"][role].update(sha256=sha256_file(target), bytes=target.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def session(path: Path, native: bool, threads: int):
    """A CPU session with the service's options, the kernel library registered or not."""
    import onnxruntime as ort

    import mlf_kernel

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if native:
        mlf_kernel.register(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Pipeline:
    """purifier -> classifier for one variant, as the service runs it."""

    def __init__(self, source: Source, variant: str, threads: int):
        native = variant == "native"
        self.sessions = {r: session(source.graph(variant, r), native, threads) for r in ROLES}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        purified, noise, purifier_spikes = self.sessions["purifier"].run(None, {"image": images})
        logits, spikes = self.sessions["classifier"].run(None, {"image": purified})
        return {
            "purified": purified,
            "noise_level": noise,
            "purifier_spikes": purifier_spikes,
            "logits": logits,
            "classifier_spikes": spikes,
        }


def spike_agreement(source: Source, images: np.ndarray, threads: int, batch: int = 100) -> dict:
    """Per-image spike counts of both networks for every variant (and PyTorch when the
    weights are known) on ``images``; how many images differ from the native kernel's."""
    outputs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    pipelines = {v: Pipeline(source, v, threads) for v in VARIANTS}
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        for variant, pipeline in pipelines.items():
            outputs[variant].append(pipeline(x))
    merged = {
        v: {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} for v, outs in outputs.items()
    }
    keys = ("purifier_spikes", "classifier_spikes")
    native = merged["native"]
    result = {"images": len(images), "differ_from_native": {}, "identical_outputs": {}}
    for variant in ("function", "unrolled"):
        other = merged[variant]
        differ = np.zeros(len(images), bool)
        for key in keys:
            differ |= native[key] != other[key]
        result["differ_from_native"][variant] = int(differ.sum())
        result["identical_outputs"][variant] = all(
            np.array_equal(native[k], other[k]) for k in native
        )
    if source.checkpoints is not None:
        result["pytorch"] = _torch_differences(source, images, native, batch)
        result["differ_from_native"]["pytorch"] = result["pytorch"]["images"]
    result["mean_spikes"] = {k: float(native[k].mean()) for k in keys}
    return result


def _torch_differences(source: Source, images: np.ndarray, native: dict, batch: int) -> dict:
    """PyTorch's pipeline against the native kernel's: the images whose spike counts differ,
    the largest difference in one image's count (either network), and on how many images
    the predicted labels agree. PyTorch's convolutions sum in another order than ORT's: a
    membrane potential within rounding of a threshold can fire in one and not the other."""
    import torch

    from training.checkpoint import load_model
    from training.export import ClassifierGraph, PurifierGraph

    classifier = ClassifierGraph(load_model(source.checkpoints["classifier"])[0].eval())
    purifier = PurifierGraph(load_model(source.checkpoints["purifier"])[0].eval())
    differ = largest = agree = 0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch])
            purified, _, purifier_spikes = purifier(x)
            logits, classifier_spikes = classifier(purified)
            sl = slice(start, start + len(x))
            deltas = [
                np.abs(ours.numpy().astype(np.int64) - native[key][sl].astype(np.int64))
                for ours, key in ((purifier_spikes, "purifier_spikes"),
                                  (classifier_spikes, "classifier_spikes"))
            ]  # fmt: skip
            differ += int(((deltas[0] > 0) | (deltas[1] > 0)).sum())
            largest = max(largest, *(int(d.max()) for d in deltas))
            agree += int((logits.numpy().argmax(1) == native["logits"][sl].argmax(1)).sum())
    return {"images": differ, "largest_count_difference": largest, "labels_agree": agree}
