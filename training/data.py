"""Dataset registry. Every dataset loads as uint8 tensors held in memory; batches are
converted to float images in [0, 1]. Normalisation belongs to the model (attacks work in
pixel space).

Fashion-MNIST reads the IDX files of Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) or any directory holding the same four files.
The others load through torchvision from a directory the user provides; nothing is ever
downloaded at run time.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "SPIKEGUARD_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and how to get it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> Split:
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return Split(self.images[idx], self.labels[idx])

    def first(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255.0)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str
    loader: Callable[[Path, bool], Split] = field(repr=False, compare=False)
    default_dir: Path | None = None
    hflip: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic ``00 00 08 <ndim>``, big-endian sizes)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != offset + math.prod(shape):
        raise ValueError(f"{path} is truncated or corrupt: {len(data)} bytes for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (
        root / f"{stem}.gz",
        root / stem,
        root / "raw" / f"{stem}.gz",
        root / "raw" / stem,
    ):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(stem)


def _load_idx_dataset(root: Path, train: bool) -> Split:
    prefix = "train" if train else "t10k"
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} {prefix} images but {len(labels)} labels")
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def _torchvision_loader(cls_name: str) -> Callable[[Path, bool], Split]:
    def load(root: Path, train: bool) -> Split:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        if cls_name == "SVHN":
            ds = cls(str(root), split="train" if train else "test", download=False)
            images = torch.from_numpy(ds.data)
            labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
        else:
            ds = cls(str(root), train=train, download=False)
            data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
            images = torch.from_numpy(data)
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
        return Split(images.contiguous(), labels)

    return load


FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "fashion-mnist", 1, 28, FASHION_CLASSES, (0.2860,), (0.3530,),
            "install Debian's package: sudo apt-get install dataset-fashion-mnist "
            "(or pass --data-dir with the four IDX files)",
            _load_idx_dataset, FASHION_MNIST_DIR,
        ),
        DatasetInfo(
            "mnist", 1, 28, tuple(str(i) for i in range(10)), (0.1307,), (0.3081,),
            "pass --data-dir with the MNIST IDX files (torchvision layout MNIST/raw works)",
            _load_idx_dataset, hflip=False,
        ),
        DatasetInfo(
            "cifar10", 3, 32, CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
            "pass --data-dir holding cifar-10-batches-py/ (torchvision CIFAR10 layout; "
            "download it on a machine with network access)",
            _torchvision_loader("CIFAR10"),
        ),
        DatasetInfo(
            "cifar100", 3, 32, tuple(f"class_{i}" for i in range(100)),
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            "pass --data-dir holding cifar-100-python/ (torchvision CIFAR100 layout)",
            _torchvision_loader("CIFAR100"),
        ),
        DatasetInfo(
            "svhn", 3, 32, tuple(str(i) for i in range(10)), (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            "pass --data-dir holding train_32x32.mat and test_32x32.mat (torchvision SVHN layout)",
            _torchvision_loader("SVHN"), hflip=False,
        ),
    ]
}  # fmt: skip


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None


def resolve_dir(info: DatasetInfo, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]) / info.name
    if info.default_dir is not None:
        return info.default_dir
    raise DatasetNotFoundError(f"dataset {info.name!r}: no directory given; {info.how_to_get}")


def load_split(name: str, train: bool, data_dir: str | os.PathLike | None = None) -> Split:
    info = dataset_info(name)
    root = resolve_dir(info, data_dir)
    try:
        return info.loader(root, train)
    except (FileNotFoundError, RuntimeError, OSError, ValueError) as exc:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in {root} ({type(exc).__name__}: {exc}); {info.how_to_get}"
        ) from None


def augment(
    images: torch.Tensor, hflip: bool, generator: torch.Generator, pad: int = 2
) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding and (optionally) horizontal flips,
    on a float batch ``[B, C, H, W]``."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = _crop(padded, dx, dy, h, w)
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def _crop(padded: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.stack(
        [
            p[:, y : y + h, x : x + w]
            for p, x, y in zip(padded, dx.tolist(), dy.tolist(), strict=True)
        ]
    )


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    indices: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields ``(images in [0, 1], labels)`` batches."""
    order = indices if indices is not None else torch.arange(len(split))
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.images[idx].float().div_(255.0), split.labels[idx]
