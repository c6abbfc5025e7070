"""The two graphs of a model directory and their input/output names (batch axis dynamic):

* ``purifier.onnx``: ``image`` float32 [N, C, H, W] in [0, 1] -> ``purified`` [N, C, H, W],
  ``noise_level`` [N, C, H, W] (the estimated per-pixel noise level), ``spikes`` [N]
  (total spikes per image).
* ``classifier.onnx``: ``image`` float32 [N, C, H, W] in [0, 1] -> ``logits`` [N, K],
  ``spikes`` [N]. Normalisation is inside the graph.

``training/export`` builds graphs with exactly these names; the service refuses a graph
whose names differ (``check_graph_io``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ContractError

IMAGE_INPUT = "image"
PURIFIER_OUTPUTS = ("purified", "noise_level", "spikes")
CLASSIFIER_OUTPUTS = ("logits", "spikes")
ROLES = ("purifier", "classifier")
GRAPH_FILES = {"purifier": "purifier.onnx", "classifier": "classifier.onnx"}
GRAPH_OUTPUTS = {"purifier": PURIFIER_OUTPUTS, "classifier": CLASSIFIER_OUTPUTS}
# the weights each graph was exported from (weights-only safetensors, in the same directory)
WEIGHT_FILES = {"purifier": "purifier.safetensors", "classifier": "classifier.safetensors"}


def check_graph_io(role: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Raises ``ContractError`` unless a ``role`` graph's names are the contract's."""
    if list(inputs) != [IMAGE_INPUT] or tuple(outputs) != GRAPH_OUTPUTS[role]:
        raise ContractError(
            f"{role} graph has inputs {list(inputs)} and outputs {list(outputs)}; "
            f"expected {[IMAGE_INPUT]} and {list(GRAPH_OUTPUTS[role])}"
        )
