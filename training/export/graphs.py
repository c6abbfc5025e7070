"""The two ONNX graphs: PyTorch modules with the contract's inputs and outputs
(``contract/graphs.py``), and their export.

``ClassifierGraph`` is ``image -> (logits, spikes)`` and ``PurifierGraph`` is
``image -> (purified, noise_level, spikes)``; ``spikes`` is the per-image spike count of
the whole network, taken by forward hooks on its neurons. A wrapper's hooks stay on the
wrapped model until ``remove()`` (or the end of a ``with`` block), so the model can be
used as itself afterwards.

Graphs come from the ``torch.export``-based exporter (``dynamo=True``); the TorchScript
exporter bakes the example's batch size into the neurons' zero-initialised membranes and
cannot give a dynamic batch axis. ``export_graph`` is the one place a graph is written:
how neurons are lowered to ONNX is decided here. By default (``neurons="node"``) every MLF
neuron becomes one ``ai.spikeguard::MLF`` node and the file carries the model-local
function that computes it in plain operators (``mlf_kernel.graph``): ONNX Runtime runs the
node with the native kernel when the library is registered and inlines the function
otherwise, with identical outputs. ``neurons="unrolled"`` keeps the exporter's loop of
plain operators per step (the benchmark's baseline).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from contract import GRAPH_OUTPUTS, IMAGE_INPUT

from ..errors import UsageError
from ..snn import SpikeRecorder, spiking_neurons

OPSET = 18
NEURON_FORMS = ("node", "unrolled")
EXPORTER = "torch.onnx.export(dynamo=True)"


class SpikeCounter(SpikeRecorder):
    """A ``SpikeRecorder`` that keeps only the per-image counts: the firing-rate hook
    converts a tensor to a Python float, which ``torch.export`` cannot trace."""

    def _hook(self, name: str):
        def hook(_module, _inputs, output: torch.Tensor) -> None:
            dims = [0] + list(range(2, output.dim()))
            self.per_image.append(output.sum(dim=dims))

        return hook


class _Graph(nn.Module):
    role = ""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.recorder = SpikeCounter(model)

    def remove(self) -> None:
        """Takes the spike-counting hooks off the wrapped model."""
        self.recorder.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class ClassifierGraph(_Graph):
    """``image -> (logits, spikes)``: the classifier plus its per-image spike count."""

    role = "classifier"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.recorder.reset()
        logits = self.model(image)
        return logits, self.recorder.total()


class PurifierGraph(_Graph):
    """``image -> (purified, noise_level, spikes)``."""

    role = "purifier"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.recorder.reset()
        purified, noise_level = self.model(image)
        return purified, noise_level, self.recorder.total()


def export_graph(graph: _Graph, example: torch.Tensor, path: Path, neurons: str = "node") -> Path:
    """Exports ``graph`` (input ``image`` with a dynamic batch axis, the outputs its role
    has in the contract) to one self-contained ONNX file at ``path``, each neuron as one
    MLF node (``neurons="node"``) or as the exporter's unrolled loop (``"unrolled"``)."""
    if neurons not in NEURON_FORMS:
        raise ValueError(f"neurons must be one of {NEURON_FORMS}, got {neurons!r}")
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
                input_names=[IMAGE_INPUT],
                output_names=list(GRAPH_OUTPUTS[graph.role]),
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
            )
    if neurons == "node":
        lower_neurons(graph, path)
    return path


def lower_neurons(graph: _Graph, path: Path) -> int:
    """Rewrites the exported file at ``path`` with one MLF node per neuron of ``graph``
    (plus the function); every neuron must be found, else the exporter's loop changed
    shape and the export stops. Returns the number of neurons."""
    import onnx

    from mlf_kernel.fuse import NotAnMLFNeuron, fuse_neurons

    expected = sum(1 for _ in spiking_neurons(graph.model))
    try:
        model, fused = fuse_neurons(onnx.load(str(path)))
    except NotAnMLFNeuron as exc:
        raise UsageError(f"{graph.role}: cannot lower a neuron to one MLF node: {exc}") from None
    if fused != expected:
        raise UsageError(
            f"{graph.role}: {fused} of its {expected} neurons became MLF nodes; the "
            "exporter's unrolled neuron loop no longer has the shape mlf_kernel.fuse reads"
        )
    onnx.save(model, str(path))
    return fused
