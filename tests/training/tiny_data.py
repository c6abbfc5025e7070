"""A tiny IDX dataset in Fashion-MNIST's file layout, for the training and study tests
(imported by name: ``tests/training`` is on ``sys.path`` through its conftest)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_tiny_dataset(root: Path, n_train: int = 320, n_test: int = 64, size: int = 12) -> Path:
    """Ten classes, each a bright square at its own position on a noisy background: easy
    enough that a few dozen SGD steps separate them."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, size, size))
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 4)
            images[i, 1 + 3 * r : 4 + 3 * r, 1 + 3 * c : 3 + 3 * c] = 255
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
