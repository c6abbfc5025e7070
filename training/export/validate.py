"""``python -m training validate-model DIR``: does a model directory keep the contract?

Beyond what the service checks when it loads a model (the manifest's fields, every
graph's sha256, the graphs' input and output names), this checks what export recorded:
the provenance sections, every sample's sha256, a dynamic batch axis (batches of 1 and
3), output shapes that fit the manifest, networks that fire, and — when the dataset is
at hand — the clean accuracies of ``metrics``, measured again through ONNX Runtime on the
same test images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import GRAPH_OUTPUTS, IMAGE_INPUT, ContractError, Manifest, check_graph_io
from contract import validate_model_dir as check_directory

from ..data import DatasetNotFoundError, load_split
from .parity import ort_accuracy, ort_session

# a re-measured accuracy may differ from the recorded one by a few threshold flips
ACCURACY_TOLERANCE = 0.01


@dataclass
class Validation:
    model_dir: Path
    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_model(
    model_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None
) -> Validation:
    """Every check above; problems and notes (what was skipped) in the result."""
    model_dir = Path(model_dir)
    manifest, problems = check_directory(model_dir)
    result = Validation(model_dir, manifest, problems)
    if manifest is None or any("graph" in p for p in problems):
        return result  # graphs that are missing or corrupt cannot be run
    sessions = {}
    for role in GRAPH_OUTPUTS:
        try:
            session = ort_session(model_dir / manifest.graph(role).path)
            names = (
                [i.name for i in session.get_inputs()],
                [o.name for o in session.get_outputs()],
            )
            check_graph_io(role, *names)
        except ContractError as exc:
            result.problems.append(str(exc))
            continue
        except Exception as exc:  # ORT raises its own types for graphs it cannot load
            result.problems.append(f"onnxruntime cannot load the {role} graph: {exc}")
            continue
        sessions[role] = session
    if len(sessions) == len(GRAPH_OUTPUTS):
        result.problems += _run_checks(manifest, sessions)
        _check_accuracy(result, sessions, data_dir)
    return result


def _run_checks(manifest: Manifest, sessions: dict) -> list[str]:
    """Batches of 1 and 3 random images: shapes, and spikes in both networks."""
    problems = []
    c, h, w = manifest.input_shape
    for n in (1, 3):
        x = np.random.default_rng(n).random((n, c, h, w), dtype=np.float32)
        purified, noise_level, p_spikes = sessions["purifier"].run(None, {IMAGE_INPUT: x})
        logits, c_spikes = sessions["classifier"].run(None, {IMAGE_INPUT: purified})
        shapes = {
            "purified": (purified.shape, (n, c, h, w)),
            "noise_level": (noise_level.shape, (n, c, h, w)),
            "purifier spikes": (p_spikes.shape, (n,)),
            "logits": (logits.shape, (n, manifest.num_classes)),
            "classifier spikes": (c_spikes.shape, (n,)),
        }
        problems += [
            f"batch of {n}: {name} has shape {list(got)}, expected {list(want)}"
            for name, (got, want) in shapes.items()
            if tuple(got) != want
        ]
        if n == 3 and not problems and (p_spikes.min() <= 0 or c_spikes.min() <= 0):
            problems.append(
                f"a network is silent (spikes per image: purifier {p_spikes.tolist()}, "
                f"classifier {c_spikes.tolist()})"
            )
    return problems


def _check_accuracy(result: Validation, sessions: dict, data_dir) -> None:
    manifest = result.manifest
    if manifest.metrics is None:
        return
    recorded = manifest.metrics
    try:
        test = load_split(manifest.dataset, train=False, data_dir=data_dir)
    except (DatasetNotFoundError, ValueError) as exc:
        result.notes.append(f"accuracies not re-measured: {exc}")
        return
    test = test.first(recorded.eval_images)
    measured = ort_accuracy(
        sessions["classifier"], sessions["purifier"], test.float_images(), test.labels, 100
    )
    for key in ("clean_accuracy", "purified_clean_accuracy"):
        want, got = getattr(recorded, key), measured[key]
        if abs(want - got) > ACCURACY_TOLERANCE:
            result.problems.append(
                f"{key} is {got:.4f} on the first {recorded.eval_images} test images; "
                f"the manifest records {want:.4f}"
            )
    result.notes.append(
        f"re-measured clean accuracy {measured['clean_accuracy']:.4f}, purified "
        f"{measured['purified_clean_accuracy']:.4f} on {recorded.eval_images} test images"
    )
