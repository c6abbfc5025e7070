"""The tiny trained model the tests, the benchmarks and the soak run share.

A real model directory (``manifest.json``, ``purifier.onnx``, ``classifier.onnx``) made the
way production models are: a width-4 SENet18 classifier and purifier are trained for a few
steps on a Fashion-MNIST subset (so every spiking layer fires in eval mode), checkpointed,
and exported with ``training.export.export_model`` (which verifies ONNX Runtime against
PyTorch).

Exporting an unrolled spiking graph takes the exporter a minute or more on a small CPU, so
the result is cached under ``.cache/tests/`` keyed by a hash of every source file that
shapes it (neurons, models, checkpoint format, data loading, the exporter), the recipe
below and the torch version: the first run builds it, later runs copy it in a fraction of
a second. Delete the directory, or set ``SPIKEGUARD_TEST_CACHE`` elsewhere, to force a
rebuild. ``cached_build()`` returns the entry: ``model/``, ``classifier.safetensors``,
``purifier.safetensors``, ``unrolled/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import shutil
import tempfile
from pathlib import Path

from .processes import REPO

CACHE_ROOT = Path(os.environ.get("SPIKEGUARD_TEST_CACHE", REPO / ".cache" / "tests"))
SOURCES = [
    "training/snn/*.py",
    "training/models/__init__.py",
    "training/models/registry.py",
    "training/models/classifiers.py",
    "training/models/purifier.py",
    "training/checkpoint.py",
    "training/data.py",
    "training/samples.py",
    "training/export/*.py",
    "contract/*.py",
    "mlf_kernel/*.py",
]
TINY_TIMESTEPS = 2
TRAIN_IMAGES = 256
BATCH = 32
STEPS = 12


def _cache_key() -> str:
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for pattern in SOURCES:
        for path in sorted(REPO.glob(pattern)):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    recipe = (TINY_TIMESTEPS, TRAIN_IMAGES, BATCH, STEPS)
    digest.update(repr(recipe).encode())
    for function in (_calibrate, build_tiny_model, _train_and_export):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:16]


def _calibrate(model, images) -> None:
    """Train-mode passes with cumulative BatchNorm averages: running statistics equal to
    the data's, so the network fires in eval mode from the first training step on."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            model(images[start : start + 64])
    for m in norms:
        m.momentum = 0.1


def build_tiny_model(out: Path) -> None:
    """Trains the tiny classifier and purifier and exports them to ``out/model``;
    checkpoints land in ``out/classifier.safetensors`` and ``out/purifier.safetensors``, the
    graphs with unrolled neurons in ``out/unrolled/``."""
    import torch

    threads = torch.get_num_threads()
    # one thread: several times faster than two on a shared 2-core machine
    torch.set_num_threads(1)
    try:
        _train_and_export(out)
    finally:
        torch.set_num_threads(threads)


def _train_and_export(out: Path) -> None:
    import torch

    from training.checkpoint import save_checkpoint
    from training.data import dataset_info, load_split
    from training.export import export_model
    from training.losses import charbonnier
    from training.models import create_model

    torch.manual_seed(0)
    info = dataset_info("fashion-mnist")
    train = load_split("fashion-mnist", train=True).subset(TRAIN_IMAGES, seed=0)
    images, labels = train.float_images(), train.labels
    common = {"width": 4, "in_channels": 1, "timesteps": TINY_TIMESTEPS}
    classifier = create_model(
        "senet18_snn", num_classes=10, mean=list(info.mean), std=list(info.std), **common
    )
    purifier = create_model("purifier", **common)
    for model in (classifier, purifier):
        _calibrate(model, images)

    generator = torch.Generator().manual_seed(0)
    classifier_opt = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    purifier_opt = torch.optim.Adam(purifier.parameters(), lr=1e-2)
    for step in range(STEPS):
        start = (step * BATCH) % TRAIN_IMAGES
        x, y = images[start : start + BATCH], labels[start : start + BATCH]
        loss = torch.nn.functional.cross_entropy(classifier(x), y)
        classifier_opt.zero_grad()
        loss.backward()
        classifier_opt.step()
        noisy = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        purified, _ = purifier(noisy)
        loss = charbonnier(purified, x)
        purifier_opt.zero_grad()
        loss.backward()
        purifier_opt.step()

    config = {"steps": STEPS, "batch_size": BATCH, "train_images": TRAIN_IMAGES}
    meta = {"dataset": "fashion-mnist", "config": config}
    save_checkpoint(out / "classifier.safetensors", classifier.eval(), meta)
    save_checkpoint(out / "purifier.safetensors", purifier.eval(), meta)
    export_model(
        out / "classifier.safetensors",
        out / "purifier.safetensors",
        out / "model",
        name="tiny-fashion-mnist",
        version="0.0.1",
        eval_images=200,
    )
    # today's form of the graphs too (the exporter's unrolled neuron loops), for the tests
    # that compare it with one node per neuron
    from training.export import ClassifierGraph, PurifierGraph, export_graph

    (out / "unrolled").mkdir()
    for graph in (ClassifierGraph(classifier), PurifierGraph(purifier)):
        with graph:
            export_graph(graph, images[:2], out / "unrolled" / f"{graph.role}.onnx", "unrolled")


def cached_build() -> Path:
    """The cache entry for the current sources, building it (atomically) if missing."""
    entry = CACHE_ROOT / f"tiny-{_cache_key()}"
    if (entry / "model" / "manifest.json").exists():
        return entry
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE_ROOT, prefix=".build-"))
    try:
        build_tiny_model(staging)
        # a concurrent run may have finished first; its entry is as good
        with contextlib.suppress(OSError):
            os.replace(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
