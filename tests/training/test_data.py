"""Dataset registry: Fashion-MNIST from Debian's files, IDX parsing on generated files,
clear errors for missing or unknown datasets, augmentation and batching."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import (
    DATA_DIR_ENV,
    FASHION_MNIST_DIR,
    DatasetNotFoundError,
    Split,
    augment,
    batches,
    dataset_info,
    load_split,
)


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic 0x00 0x00 0x08 (unsigned byte) <ndim>, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def tiny_idx_dataset(root: Path, prefix: str, n: int = 5, gz: bool = True) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images = (np.arange(n * 28 * 28) % 251).astype(np.uint8).reshape(n, 28, 28)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return images


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"{FASHION_MNIST_DIR} is absent")
def test_fashion_mnist_loads_from_debian_files() -> None:
    for train, size in ((True, 60000), (False, 10000)):
        split = load_split("fashion-mnist", train)
        assert len(split) == size
        assert split.images.shape == (size, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert sorted(split.labels.unique().tolist()) == list(range(10))
        assert split.images.max() == 255  # real pixels, not an empty array
    info = dataset_info("fashion-mnist")
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 28, 10)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_idx_files_parse(tmp_path: Path, gz: bool) -> None:
    expected = tiny_idx_dataset(tmp_path, "t10k", gz=gz)
    split = load_split("fashion-mnist", train=False, data_dir=tmp_path)
    assert split.images.shape == (5, 1, 28, 28)
    assert split.images.dtype == torch.uint8
    assert np.array_equal(split.images[:, 0].numpy(), expected)
    assert split.labels.tolist() == [0, 1, 2, 3, 4]


def test_torchvision_raw_layout_is_found(tmp_path: Path) -> None:
    tiny_idx_dataset(tmp_path / "raw", "train", n=3)
    assert load_split("mnist", train=True, data_dir=tmp_path).labels.tolist() == [0, 1, 2]


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_idx_dataset(tmp_path / "fashion-mnist", "train", n=4)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_split("fashion-mnist", train=True)) == 4


def test_missing_dataset_names_directory_and_remedy(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_split("fashion-mnist", train=True, data_dir=missing)
    message = str(excinfo.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert isinstance(excinfo.value, FileNotFoundError)


def test_dataset_without_default_directory_says_how_to_get_it() -> None:
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_split("cifar10", train=True)


@pytest.mark.parametrize(
    "corruption",
    ["truncated", "wrong-magic", "label-count"],
)
def test_corrupt_idx_files_raise_dataset_errors(tmp_path: Path, corruption: str) -> None:
    tiny_idx_dataset(tmp_path, "train", n=5, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    if corruption == "truncated":
        images.write_bytes(images.read_bytes()[:-10])
    elif corruption == "wrong-magic":
        images.write_bytes(b"\x00\x00\x0d" + images.read_bytes()[3:])  # float32 IDX
    else:
        write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_split("fashion-mnist", train=True, data_dir=tmp_path)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="fashion-mnist") as excinfo:
        load_split("imagenet", train=True)
    assert "'imagenet'" in str(excinfo.value)
    with pytest.raises(ValueError, match="cifar10"):
        dataset_info("imagenet")


def _float_batch(seed: int = 0, n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_augment_keeps_shape_and_range() -> None:
    x = _float_batch()
    out = augment(x, hflip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_augment_is_a_padded_crop_and_optional_flip() -> None:
    x, pad = _float_batch(), 2
    out = augment(x, hflip=True, generator=torch.Generator().manual_seed(2), pad=pad)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for image, source in zip(out, padded, strict=True):
        candidates = [
            crop.flip(-1) if flip else crop
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            for crop in [source[:, dy : dy + 8, dx : dx + 8]]
        ]
        assert any(torch.equal(image, c) for c in candidates)


def test_augment_without_padding_or_flip_is_the_identity() -> None:
    x = _float_batch()
    assert torch.equal(augment(x, hflip=False, generator=torch.Generator(), pad=0), x)


def test_augment_is_reproducible_from_its_generator() -> None:
    x = _float_batch()
    first = augment(x, hflip=True, generator=torch.Generator().manual_seed(3))
    again = augment(x, hflip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def _split(n: int = 10) -> Split:
    images = torch.arange(n * 4, dtype=torch.uint8).mul(6).reshape(n, 1, 2, 2)
    return Split(images, torch.arange(n) % 3)


def test_batches_yield_float_images_in_unit_range() -> None:
    split = _split()
    seen = []
    for images, labels in batches(split, 4, shuffle=False):
        assert images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        assert len(images) == len(labels) <= 4
        seen.append(images)
    assert [len(b) for b in seen] == [4, 4, 2]
    assert torch.equal(torch.cat(seen), split.images.float() / 255)
    assert torch.cat(seen).max() == 234 / 255  # (10 * 4 - 1) * 6 = 234


def test_shuffled_batches_cover_every_sample_once() -> None:
    split = _split()
    generator = torch.Generator().manual_seed(0)
    labels_seen, images_seen = [], []
    for images, labels in batches(split, 3, shuffle=True, generator=generator, drop_last=True):
        assert len(images) == 3
        images_seen.append(images)
        labels_seen.append(labels)
    assert sum(len(b) for b in images_seen) == 9  # 10 // 3 * 3 with drop_last
    # each yielded image is a distinct sample and keeps its own label
    firsts = (torch.cat(images_seen)[:, 0, 0, 0] * 255).round().long() // 24  # index
    assert len(set(firsts.tolist())) == 9
    assert torch.equal(torch.cat(labels_seen), firsts % 3)
