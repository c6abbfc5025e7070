"""Every registered model: shapes, size at the paper's width, spiking activity in train and
eval mode, dependence on the input, input gradients, spike counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models import create_model, is_classifier, list_models, registry
from training.snn import firing_rates, spike_count, spiking_neurons

NUM_CLASSES = 7
BATCH = 4
# the package's own models (other test modules may register test doubles)
MODELS = [
    name
    for name in list_models()
    if registry._MODELS[name].__module__.startswith("training.models.")
]

# parameter counts at the published widths (in_channels 3), as ranges
PAPER_SIZES = {
    "senet18_snn": (dict(width=64), 11.0e6, 11.6e6),  # SENet18: about 11.3 M
    "purifier": (dict(width=64), 4.2e6, 4.6e6),  # the paper: about 4 M; this layout 4.4 M
    "resnet20_snn": (dict(width=16), 0.26e6, 0.28e6),  # He et al. 2016: 0.27 M
    "wrn16_8_snn": (dict(width=16), 10.8e6, 11.2e6),  # Zagoruyko & Komodakis 2016: 11.0 M
}


def tiny_model(name: str, in_channels: int = 1) -> nn.Module:
    kwargs: dict = dict(width=4, in_channels=in_channels, timesteps=2)
    if is_classifier(name):
        kwargs.update(num_classes=NUM_CLASSES, mean=[0.3] * in_channels, std=[0.35] * in_channels)
    if name == "wrn16_8_snn":
        kwargs["width"] = 2  # widened 8x: 16/32/64 channels
    return create_model(name, **kwargs)


def images(seed: int, in_channels: int = 1, size: int = 16, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, in_channels, size, size, generator=torch.Generator().manual_seed(seed))


def spiking_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs computed by the spiking layers: a classifier's logits; the purifier's
    noise map and its denoiser's residual (the purified image adds the input itself)."""
    if is_classifier(model.model_name):
        return [model(x)]
    _, noise_level = model(x)
    return [noise_level, model.denoiser(x, noise_level) - x]


def training_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if is_classifier(model.model_name):
        return F.cross_entropy(model(x), torch.arange(len(x)) % NUM_CLASSES)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    purified, _ = model(noisy)
    return F.mse_loss(purified, x)


def warm_up(model: nn.Module, steps: int = 2, passes: int = 3) -> nn.Module:
    """A couple of SGD steps and a few train-mode forward passes, then eval mode.

    The steps move the weights off their initial values (the purifier's residual head
    starts at zero: a fresh purifier is the identity). A fresh model is also silent in
    eval mode, its BatchNorm running statistics being the defaults; with the usual
    momentum (0.1) they need dozens of passes to settle, so the passes use a cumulative
    average (momentum None) and the momentum is restored afterwards."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(steps):
        optimizer.zero_grad()
        training_loss(model, images(200 + i)).backward()
        optimizer.step()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
    with torch.no_grad():
        for i in range(passes):
            model(images(100 + i))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


@pytest.fixture(scope="module", params=MODELS)
def warm_model(request) -> tuple[str, nn.Module]:
    return request.param, warm_up(tiny_model(request.param))


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 17)])
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name: str, in_channels: int, size: int) -> None:
    model = tiny_model(name, in_channels)
    x = images(0, in_channels, size)
    with torch.no_grad():
        out = model(x)
    if is_classifier(name):
        assert out.shape == (BATCH, NUM_CLASSES)
        assert torch.isfinite(out).all()
    else:
        purified, noise_level = out
        assert purified.shape == noise_level.shape == x.shape
        assert purified.min() >= 0 and purified.max() <= 1
        assert noise_level.min() > 0 and noise_level.max() < 1


def test_every_registered_model_has_a_paper_size() -> None:
    assert set(PAPER_SIZES) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_at_paper_width(name: str) -> None:
    kwargs, low, high = PAPER_SIZES[name]
    model = create_model(name, in_channels=3, **kwargs)
    count = sum(p.numel() for p in model.parameters())
    assert low <= count <= high, f"{name}: {count:,} parameters"


@pytest.mark.parametrize("name", MODELS)
def test_every_spiking_layer_fires_in_train_mode(name: str) -> None:
    model = tiny_model(name).train()
    rates = firing_rates(model, images(1))
    assert set(rates) == {layer for layer, _ in spiking_neurons(model)}
    silent_or_saturated = {layer: r for layer, r in rates.items() if not 0 < r < 1}
    assert not silent_or_saturated


def test_every_spiking_layer_fires_in_eval_mode_after_warm_up(warm_model) -> None:
    _, model = warm_model
    rates = firing_rates(model, images(2))
    assert set(rates) == {layer for layer, _ in spiking_neurons(model)}
    silent = [layer for layer, r in rates.items() if r == 0]
    assert not silent


def test_outputs_depend_on_the_input_and_nothing_else(warm_model) -> None:
    _, model = warm_model
    x = images(3)
    with torch.no_grad():
        first = spiking_outputs(model, x)
        other = spiking_outputs(model, images(4))
        again = spiking_outputs(model, x)
    for a, b, a_again in zip(first, other, again, strict=True):
        assert torch.equal(a, a_again)  # no state carried between calls
        assert not torch.equal(a, b)
        # every sample's output differs from every other sample's
        flat = a.flatten(1)
        distances = torch.cdist(flat, flat) + torch.eye(len(flat))
        assert (distances > 0).all()


def test_finite_nonzero_input_gradients_in_eval_mode(warm_model) -> None:
    _, model = warm_model
    assert not model.training
    x = images(5).requires_grad_()
    outputs = spiking_outputs(model, x)
    for output in outputs:  # each spiking path on its own
        (grad,) = torch.autograd.grad(output.square().sum(), x, retain_graph=True)
        assert torch.isfinite(grad).all()
        assert (grad.flatten(1).abs().sum(1) > 0).all(), "some sample got no gradient"
    if is_classifier(model.model_name):
        loss = F.cross_entropy(outputs[0], torch.arange(BATCH) % NUM_CLASSES)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_spike_count_is_a_nonzero_count_per_image(warm_model) -> None:
    _, model = warm_model
    counts = spike_count(model, images(6))
    assert counts.shape == (BATCH,)
    assert (counts > 0).all()
    assert torch.equal(counts, counts.round())


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="senet19") as excinfo:
        create_model("senet19")
    for name in list_models():
        assert name in str(excinfo.value)


def test_create_model_records_its_arguments() -> None:
    model = create_model("resnet20_snn", width=4, in_channels=1, timesteps=3)
    assert model.model_name == "resnet20_snn"
    assert model.model_kwargs == dict(width=4, in_channels=1, timesteps=3)
    assert model.timesteps == 3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(timesteps=0), "timesteps"),
        (dict(thresholds=(1.6, 0.6)), "increasing"),
        (dict(thresholds=(0.0, 1.0)), "positive"),
    ],
)
def test_bad_neuron_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("senet18_snn", width=4, **kwargs)
