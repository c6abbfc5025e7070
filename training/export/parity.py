"""Does ONNX Runtime reproduce PyTorch? An export checks itself before anything is
installed: on real test images the max abs difference must stay below ``PARITY_ATOL`` for
logits and purified pixels, with identical top-1, on every image whose spike counts agree;
threshold flips may touch at most ``MAX_FLIP_FRACTION`` of the images; every network must
fire (see ``Parity``). The accuracies in the manifest are measured here, through ORT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract import IMAGE_INPUT

from .graphs import ClassifierGraph, PurifierGraph

PARITY_ATOL = 1e-4
PARITY_IMAGES = 256
MAX_FLIP_FRACTION = 0.05


def ort_session(path: Path, native: bool | None = None):
    """A CPU session with the optimisation level the service uses, so parity is checked
    on the graph as it will really run: with the native MLF kernel when it is built (as
    the service runs CPU sessions; ``native`` forces it on or off)."""
    import onnxruntime as ort

    import mlf_kernel

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if native or (native is None and mlf_kernel.available()):
        mlf_kernel.register(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def native_matches_function(paths: list[Path], images: torch.Tensor) -> list[str]:
    """Problems, if any: every output of every graph must be bit-identical with the native
    MLF kernel and through the function body (nothing to check if the kernel is not built)."""
    import mlf_kernel

    if not mlf_kernel.available():
        return []
    x = {IMAGE_INPUT: images.numpy()}
    problems = []
    for path in paths:
        native = ort_session(path, native=True)
        function = ort_session(path, native=False)
        names = [o.name for o in native.get_outputs()]
        for name, a, b in zip(names, native.run(None, x), function.run(None, x), strict=True):
            if not np.array_equal(a, b):
                problems.append(f"{path.name} {name}: the native kernel and the function differ")
    return problems


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
        purified, noise_level, purifier_spikes = purifier_session.run(None, {IMAGE_INPUT: x})
        logits, classifier_spikes = classifier_session.run(None, {IMAGE_INPUT: x})
        purified_logits, purified_spikes = classifier_session.run(None, {IMAGE_INPUT: purified})
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
        (logits, _) = classifier_session.run(None, {IMAGE_INPUT: x})
        purified = purifier_session.run(["purified"], {IMAGE_INPUT: x})[0]
        (purified_logits, _) = classifier_session.run(None, {IMAGE_INPUT: purified})
        correct += int((logits.argmax(1) == y).sum())
        correct_purified += int((purified_logits.argmax(1) == y).sum())
    n = len(images)
    return {
        "eval_images": n,
        "clean_accuracy": correct / n,
        "purified_clean_accuracy": correct_purified / n,
    }
