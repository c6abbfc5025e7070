"""The tiny spiking classifier the attack and evaluation tests share, and its data.

Imported by name (``tests/training`` is on ``sys.path`` through its conftest). The trained
models themselves are session fixtures in ``tests/training/conftest.py``: trained once,
whatever module asks first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from training.models import create_model, register_model, registry
from training.snn import ConvBNSpike, DirectEncoder, NeuronConfig

IMAGE = 12
CLASSES = 10


class TinySNN(nn.Module):
    """Direct encoder + one strided spiking conv + linear readout (mean over T)."""

    def __init__(self, in_channels: int = 1, num_classes: int = CLASSES, width: int = 8,
                 timesteps: int = 2, image_size: int = IMAGE):  # fmt: skip
        super().__init__()
        neurons = NeuronConfig.from_kwargs(None, 0.25, timesteps)
        self.encoder = DirectEncoder(in_channels, width, neurons)
        self.block = ConvBNSpike(width, 2 * width, neurons, stride=2)
        self.fc = nn.Linear(2 * width * ((image_size + 1) // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.encoder(x)).mean(0).flatten(1))


def tiny_snn_test(**kwargs) -> TinySNN:
    return TinySNN(**kwargs)


@contextlib.contextmanager
def tiny_model_registered() -> Iterator[None]:
    """``tiny_snn_test`` in the model registry (so checkpoints of it load) while the
    tests that need it run, and out of it afterwards, so no other test sees it. Nests:
    an inner use leaves an outer registration in place."""
    already = "tiny_snn_test" in registry.list_models()
    register_model(tiny_snn_test)
    try:
        yield
    finally:
        if not already:
            registry._MODELS.pop("tiny_snn_test", None)


def make_blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes: a bright 3x2 patch at a class-specific place on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = 0.3 * torch.rand(n, 1, IMAGE, IMAGE, generator=g)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 5)
        images[i, 0, 2 + 5 * row : 5 + 5 * row, 1 + 2 * col : 3 + 2 * col] += 0.5
    return images.clamp(0, 1), labels


def calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Train-mode passes with cumulative BatchNorm averages, so eval mode fires at once."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for m in norms:
        m.momentum = 0.1


def train_tiny(seed: int, steps: int = 40) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("tiny_snn_test")
    images, labels = make_blobs(512, seed=100 + seed)
    calibrate(model, images)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(labels)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    calibrate(model, images)
    return model.eval()
