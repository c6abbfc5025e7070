"""Demo samples stored with an exported model: a few test images and adversarial versions
of each, every one labelled with the threat model it was made under.

``write_samples`` writes ``<model_dir>/samples/<id>.png`` and returns one record per image
(``contract.SampleRecord``; export lists them in ``manifest.json``, ``add_samples`` adds
them to an existing model directory). The
service's demo page lists them through ``GET /samples`` and fetches them through
``GET /samples/{id}``. Per test image there are four variants:

* ``clean``: the test image itself.
* ``pgd``: L-inf PGD against the undefended classifier (*classifier-only*, the paper's
  protocol); the purifier first sees the finished example, so on the pipeline it is a
  transfer attack.
* ``autoattack``: the same threat model, made by the first two stages of standard
  AutoAttack (APGD-CE, then APGD-T on the samples APGD-CE did not fool); FAB-T and
  Square are not run, and the records say so.
* ``pgd-end-to-end``: L-inf PGD whose gradients flow through purifier and classifier
  (surrogate gradients in both): an adaptive attacker who holds the whole model.

Images are picked class by class, in test-set order, preferring images that both the
classifier and the purified pipeline classify correctly, so every attack has a correct
prediction to overturn. Adversarial examples are rounded to 8 bits inside the eps ball
(``quantize``): the stored PNG is exactly what the attack's budget allows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from contract import (
    SAMPLES_DIR,
    Manifest,
    SampleRecord,
    load_manifest,
    sha256_file,
    write_manifest,
)

from .attacks import Budget, build_attack
from .data import dataset_info, load_split
from .threat_models import PurifiedClassifier

DEFAULT_SAMPLES = 12
DEFAULT_EPS = 8 / 255
PGD_STEPS = 20
APGD_STEPS = 100
# test images scanned for correctly classified candidates, per requested sample
CANDIDATES_PER_SAMPLE = 10

VARIANTS = ("clean", "pgd", "autoattack", "pgd-end-to-end")
THREAT_MODELS: dict[str, tuple[str | None, str]] = {
    "clean": (None, "the unmodified test image"),
    "pgd": (
        "classifier-only",
        "crafted against the undefended classifier, then transferred to the purified pipeline",
    ),
    "autoattack": (
        "classifier-only",
        "crafted against the undefended classifier, then transferred to the purified pipeline",
    ),
    "pgd-end-to-end": (
        "end-to-end",
        "adaptive attacker: gradients flow through the purifier and the classifier",
    ),
}


def default_eps(*metas: dict[str, Any]) -> float:
    """The evaluation epsilon the checkpoints were trained for (their config's
    ``eval_eps``), or 8/255 when none names one."""
    for meta in metas:
        eps = (meta.get("config") or {}).get("eval_eps")
        if eps is not None:
            return float(eps)
    return DEFAULT_EPS


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def select_images(
    classifier: nn.Module,
    purifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    num_classes: int,
) -> list[int]:
    """Indices of ``n`` images, classes in turn (0, 1, ..., 0, 1, ...), each the first
    unused image of its class that classifier and pipeline both get right, or failing
    that the first unused image of its class."""
    correct = (_predict(classifier, images) == labels) & (
        _predict(PurifiedClassifier(purifier, classifier), images) == labels
    )
    chosen: list[int] = []
    for slot in range(n * num_classes):
        if len(chosen) == n:
            break
        of_class = [
            i for i in range(len(labels)) if labels[i] == slot % num_classes and i not in chosen
        ]
        if of_class:
            good = [i for i in of_class if correct[i]]
            chosen.append((good or of_class)[0])
    for i in range(len(labels)):  # classes ran out of images: fill in test-set order
        if len(chosen) == n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def quantize(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> np.ndarray:
    """``x_adv`` as uint8 [B, C, H, W], rounded to the nearest level that stays inside the
    L-inf ball of radius ``eps`` around ``x`` (itself on the 8-bit grid) and in [0, 255]."""
    base = torch.round(x * 255)
    budget = np.floor(eps * 255 + 1e-6)
    levels = torch.round(x_adv * 255)
    levels = torch.min(torch.max(levels, base - budget), base + budget).clamp(0, 255)
    return levels.to(torch.uint8).numpy()


def _autoattack_subset(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """AutoAttack's first two stages as the reference cascade runs them: APGD-CE on every
    sample, then APGD-T on those it did not fool."""
    apgd = build_attack("apgd-ce", model, Budget(eps, steps=steps), seed=seed)
    apgd_t = build_attack("apgd-t", model, Budget(eps, steps=steps), seed=seed)
    x_adv = apgd(x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).nonzero().flatten()
    if len(robust):
        x_adv[robust] = apgd_t(x[robust], y[robust])
    settings = {
        "attack": "autoattack",
        "norm": "Linf",
        "eps": eps,
        "version": "standard, first two stages",
        "components": ["apgd-ce", "apgd-t"],
        "not_run": ["fab-t", "square"],
        "apgd-ce": apgd.settings(),
        "apgd-t": apgd_t.settings(),
    }
    return x_adv, settings


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Batches of a dozen small images gain little from intra-op threads, and on a busy
    machine their synchronisation makes each step many times slower; restored on exit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_png(path: Path, pixels: np.ndarray) -> str:
    """``pixels`` uint8 [C, H, W] -> PNG at ``path``; returns its sha256."""
    image = (
        Image.fromarray(pixels[0], "L")
        if pixels.shape[0] == 1
        else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    )
    image.save(path, format="PNG")
    return sha256_file(path)


@_one_thread()
def write_samples(
    model_dir: str | os.PathLike,
    classifier: nn.Module,
    purifier: nn.Module,
    dataset: str,
    *,
    n: int = DEFAULT_SAMPLES,
    eps: float = DEFAULT_EPS,
    data_dir: str | os.PathLike | None = None,
    pgd_steps: int = PGD_STEPS,
    apgd_steps: int = APGD_STEPS,
    seed: int = 0,
) -> list[SampleRecord]:
    """Picks ``n`` test images of ``dataset``, attacks them, writes every variant to
    ``<model_dir>/samples/`` (replacing what was there) and returns the records.

    PGD runs ``pgd_steps`` steps of ``2.5 * eps / pgd_steps`` from a random start (Madry
    et al.'s step rule); APGD-CE and APGD-T run ``apgd_steps`` iterations each. ``classifier``
    and ``purifier`` are switched to eval mode. Torch runs on one thread meanwhile: 12
    samples at the default budgets take about 40 s of CPU for a width-8 SENet18-SNN."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    model_dir = Path(model_dir)
    classifier.eval()
    purifier.eval()
    info = dataset_info(dataset)
    test = load_split(dataset, train=False, data_dir=data_dir).first(n * CANDIDATES_PER_SAMPLE)
    images, labels = test.float_images(), test.labels
    indices = select_images(classifier, purifier, images, labels, n, info.num_classes)
    x, y = images[indices], labels[indices]

    pipeline = PurifiedClassifier(purifier, classifier)
    budget = Budget(eps, steps=pgd_steps)  # the default step size, 2.5 * eps / steps
    pgd = build_attack("pgd", classifier, budget, seed=seed)
    pgd_end_to_end = build_attack("pgd", pipeline, budget, seed=seed)
    with torch.enable_grad():
        autoattack, autoattack_settings = _autoattack_subset(
            classifier, x, y, eps, apgd_steps, seed
        )
        adversarial = {
            "pgd": (pgd(x, y), pgd.settings(), pgd_steps),
            "autoattack": (autoattack, autoattack_settings, apgd_steps),
            "pgd-end-to-end": (pgd_end_to_end(x, y), pgd_end_to_end.settings(), pgd_steps),
        }
    stored = {"clean": (x * 255).round().to(torch.uint8).numpy()}
    stored |= {name: quantize(x_adv, x, eps) for name, (x_adv, _, _) in adversarial.items()}

    return _write_records(model_dir, indices, y, stored, adversarial, info.class_names, eps)


def _write_records(
    model_dir: Path, indices: list[int], y: torch.Tensor, stored: dict[str, np.ndarray],
    adversarial: dict[str, tuple], class_names: tuple[str, ...], eps: float,
) -> list[SampleRecord]:  # fmt: skip
    """Every variant of every chosen image as ``samples/<id>.png``, and its record."""
    out = model_dir / SAMPLES_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    records = []
    for row, index in enumerate(indices):
        source = f"{row:02d}"
        class_index = int(y[row])
        for variant in VARIANTS:
            sample_id = f"{source}-{variant}"
            filename = f"{SAMPLES_DIR}/{sample_id}.png"
            threat_model, threat_note = THREAT_MODELS[variant]
            attack = adversarial.get(variant)
            records.append(
                SampleRecord(
                    id=sample_id,
                    source=source,
                    file=filename,
                    sha256=_write_png(model_dir / filename, stored[variant][row]),
                    test_index=int(index),
                    label=class_names[class_index],
                    class_index=class_index,
                    variant=variant,
                    threat_model=threat_model,
                    threat_model_note=threat_note,
                    eps=eps if attack else 0.0,
                    steps=attack[2] if attack else 0,
                    attack=attack[1] if attack else None,
                )
            )
    return records


def add_samples(
    model_dir: str | os.PathLike, classifier: nn.Module, purifier: nn.Module, **options: Any
) -> Manifest:
    """Writes samples into an existing model directory and lists them in its manifest;
    ``options`` are ``write_samples``'s. Returns the new manifest."""
    manifest = load_manifest(model_dir)
    records = write_samples(model_dir, classifier, purifier, manifest.dataset, **options)
    manifest = manifest.model_copy(update={"samples": records, "rejected_samples": []})
    write_manifest(model_dir, manifest)
    return manifest
