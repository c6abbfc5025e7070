"""Whole exported models: the exporter's unrolled graphs, the exported graphs with one MLF
node per neuron (run through the function body and through the native kernel) and PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mlf_kernel
from mlf_kernel.fuse import fuse_neurons
from training.checkpoint import load_model
from training.data import load_split
from training.export import ClassifierGraph, PurifierGraph
from training.export.parity import MAX_FLIP_FRACTION
from training.snn import spiking_neurons

ROLES = ("purifier", "classifier")


def session(model: onnx.ModelProto | Path, native: bool, library: Path | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if native:
        mlf_kernel.register(options, library)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_split("fashion-mnist", train=False).first(96).float_images().numpy()


@pytest.fixture(scope="module")
def fused(tiny_model_dir: Path) -> dict[str, tuple[onnx.ModelProto, int]]:
    """The exported graphs (one node per neuron) and their MLF node counts."""
    models = {r: onnx.load(str(tiny_model_dir / f"{r}.onnx")) for r in ROLES}
    return {r: (m, sum(n.op_type == "MLF" for n in m.graph.node)) for r, m in models.items()}


@pytest.mark.parametrize("role", ROLES)
def test_export_writes_one_node_per_neuron(fused, tiny_build: Path, role: str):
    model, count = fused[role]
    torch_model, _ = load_model(tiny_build / f"{role}.safetensors")
    assert count == len(list(spiking_neurons(torch_model))) > 0
    ops = [n.op_type for n in model.graph.node]
    assert "GreaterOrEqual" not in ops and "Gather" not in ops  # nothing of the loop left
    assert [(f.domain, f.name) for f in model.functions] == [("ai.spikeguard", "MLF")]
    node = next(n for n in model.graph.node if n.op_type == "MLF")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    neurons = torch_model.neurons
    assert attributes["timesteps"] == neurons.timesteps
    assert attributes["thresholds"] == pytest.approx(list(neurons.thresholds))
    assert attributes["decay"] == pytest.approx(neurons.decay)


@pytest.mark.parametrize("role", ROLES)
def test_fused_graph_equals_unrolled_graph(
    fused, tiny_unrolled_graphs, kernel_library, images, role
):
    unrolled = session(tiny_unrolled_graphs / f"{role}.onnx", native=False)
    expected = unrolled.run(None, {"image": images})
    for native in (False, True):
        got = session(fused[role][0], native, kernel_library).run(None, {"image": images})
        for name, a, b in zip([o.name for o in unrolled.get_outputs()], expected, got, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{role} {name} native={native}")
    spikes = expected[-1]
    assert spikes.min() > 0 and len(np.unique(spikes)) > len(spikes) // 4  # fires, input-dependent


def test_spike_counts_native_vs_function_vs_pytorch(fused, tiny_build, kernel_library, images):
    """The native kernel and the function agree exactly; PyTorch sums its convolutions in
    another order, so a potential within rounding of a threshold may flip there, on at
    most the export parity check's share of images."""
    classifier, _ = load_model(tiny_build / "classifier.safetensors")
    purifier, _ = load_model(tiny_build / "purifier.safetensors")
    with torch.no_grad():
        x = torch.from_numpy(images)
        torch_spikes = {
            "classifier": ClassifierGraph(classifier.eval())(x)[1].numpy(),
            "purifier": PurifierGraph(purifier.eval())(x)[2].numpy(),
        }
    for role in ROLES:
        model = fused[role][0]
        native = session(model, True, kernel_library).run(None, {"image": images})[-1]
        function = session(model, False).run(None, {"image": images})[-1]
        np.testing.assert_array_equal(native, function)
        flips = int((native != torch_spikes[role]).sum())
        assert flips <= MAX_FLIP_FRACTION * len(images), f"{role}: {flips} flips"


@pytest.mark.parametrize("role", ROLES)
def test_fuse_pass_gives_the_exported_graph(fused, tiny_unrolled_graphs: Path, role: str):
    model, count = fuse_neurons(onnx.load(str(tiny_unrolled_graphs / f"{role}.onnx")))
    exported, exported_count = fused[role]
    assert count == exported_count
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in exported.graph.node]


def test_graph_without_neurons_is_left_alone(fused):
    model, _ = fused["classifier"]
    again, none = fuse_neurons(model)
    assert none == 0
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in model.graph.node]
