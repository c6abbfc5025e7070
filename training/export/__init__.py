"""Export: purifier + classifier checkpoints -> a model directory the service loads
(``manifest.json``, ``purifier.onnx``, ``classifier.onnx``, ``samples/``), as
``contract/`` defines it.

* ``graphs``: the PyTorch modules with the contract's inputs and outputs, and their export
  to ONNX (where neurons are lowered).
* ``parity``: ONNX Runtime against PyTorch, and the accuracies measured through ORT.
* ``package``: ``export_model``, the staging directory, the manifest, the install.
* ``validate``: ``validate_model``, the contract checked on a finished directory.
* ``cli``: ``python -m training export`` and ``python -m training validate-model DIR``.
"""

from .cli import configure, run
from .graphs import ClassifierGraph, PurifierGraph, export_graph
from .package import build_manifest, export_model
from .parity import PARITY_ATOL, Parity, check_parity, ort_accuracy, ort_session
from .validate import Validation, validate_model

__all__ = [
    "PARITY_ATOL",
    "ClassifierGraph",
    "Parity",
    "PurifierGraph",
    "Validation",
    "build_manifest",
    "check_parity",
    "configure",
    "export_graph",
    "export_model",
    "ort_accuracy",
    "ort_session",
    "run",
    "validate_model",
]
