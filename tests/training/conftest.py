"""Fixtures of the training tests: one thread per module, and the tiny spiking classifier
(``tiny_snn.py``) trained once per session, with a second one (another seed) as a
transfer source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_snn import tiny_model_registered, train_tiny
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine the thread
    hand-offs cost more than the work; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def registered_tiny_snn() -> Iterator[None]:
    """``tiny_snn_test`` in the model registry (so its checkpoints load) for one module;
    other modules do not see it."""
    with tiny_model_registered():
        yield


def _trained(seed: int) -> nn.Module:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tiny_model_registered():
            return train_tiny(seed=seed)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_snn() -> nn.Module:
    """The tiny classifier trained from seed 0 (tests must not change its weights)."""
    return _trained(0)


@pytest.fixture(scope="session")
def tiny_snn_source() -> nn.Module:
    """Another one, trained from seed 1: an independent transfer source."""
    return _trained(1)
