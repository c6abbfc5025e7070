"""Attacks on the tiny spiking classifier (``tiny_snn.py``, a session fixture) trained on
generated data.

The classifier is built from the project's MLF neurons (encoder, one strided spiking conv,
linear readout); it is trained until it fires in eval mode and classifies well, which the
fixture asserts, so the attacks are tested against a network whose gradients exist.
"""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_snn import IMAGE, calibrate, make_blobs
from torch import nn

from training.attacks import (
    APGD,
    APGDT,
    ATTACKS,
    BPDAEOT,
    CW,
    FABT,
    FGSM,
    IFGSM,
    MIFGSM,
    PGD,
    AutoAttack,
    GaussianNoise,
    Square,
    fgsm,
    pgd,
)
from training.models import create_model
from training.snn import firing_rates, use_surrogate
from training.threat_models import BPDAPipeline

pytestmark = pytest.mark.usefixtures("registered_tiny_snn")


@pytest.fixture(scope="module")
def model(tiny_snn) -> nn.Module:
    model = tiny_snn
    images, _ = make_blobs(64, seed=1)
    rates = firing_rates(model, images)
    assert rates and all(r > 0.01 for r in rates.values()), rates
    with torch.no_grad():
        assert not torch.allclose(model(images[:1]), model(images[1:2]))
    return model


@pytest.fixture(scope="module")
def data(model) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_blobs(48, seed=7)
    with torch.no_grad():
        assert accuracy(model, images, labels) >= 0.8
    return images, labels


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


EPS = 0.25
BOUNDED = {
    "fgsm": lambda m: FGSM(m, EPS),
    "ifgsm": lambda m: IFGSM(m, EPS, steps=5),
    "mifgsm": lambda m: MIFGSM(m, EPS, steps=5),
    "pgd": lambda m: PGD(m, EPS, alpha=EPS / 4, steps=5),
    "cw": lambda m: CW(m, EPS, alpha=EPS / 4, steps=5),
    "bpda-eot": lambda m: BPDAEOT(m, EPS, alpha=EPS / 4, steps=5, eot_samples=2),
    "apgd-ce": lambda m: APGD(m, EPS, steps=10),
    "apgd-t": lambda m: APGDT(m, EPS, steps=5, n_target_classes=2),
    "fab-t": lambda m: FABT(m, EPS, steps=5, n_target_classes=2),
    "square": lambda m: Square(m, EPS, queries=100),
    "autoattack": lambda m: AutoAttack(m, EPS),
}


def test_every_registered_attack_is_tested():
    assert set(ATTACKS) == set(BOUNDED) | {"gaussian"}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_attack_stays_in_ball_and_lowers_accuracy(name, model, data):
    x, y = data
    x_adv = BOUNDED[name](model)(x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2


def test_attacks_leave_model_mode_and_global_rng_alone(model, data):
    x, y = data
    state = torch.random.get_rng_state()
    for build in (BOUNDED["pgd"], BOUNDED["apgd-ce"]):
        build(model)(x[:8], y[:8])
    assert torch.equal(state, torch.random.get_rng_state())
    assert not model.training


def test_seeded_attacks_are_reproducible(model, data):
    x, y = data
    a = PGD(model, EPS, alpha=EPS / 4, steps=2, seed=3)(x, y)
    b = PGD(model, EPS, alpha=EPS / 4, steps=2, seed=3)(x, y)
    c = PGD(model, EPS, alpha=EPS / 4, steps=2, seed=4)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = GaussianNoise(sigma=0.1, seed=3)
    assert torch.equal(noise(x, y), noise(x, y))


@pytest.mark.parametrize(
    "attack",
    [
        lambda m: PGD(m, 0.0, alpha=0.01, steps=5),
        lambda m: PGD(m, 0.1, alpha=0.01, steps=0),
        lambda m: APGD(m, 0.0, steps=10),
        lambda m: APGD(m, 0.1, steps=0),
        lambda m: IFGSM(m, 0.0),
        lambda m: FGSM(m, 0.0),
        lambda m: AutoAttack(m, 0.0),
    ],
)
def test_zero_budget_returns_the_input(attack, model, data):
    x, y = data
    assert torch.equal(attack(model)(x, y), x)


def test_gaussian_noise_has_the_stated_sigma():
    x = torch.full((64, 1, IMAGE, IMAGE), 0.5)
    noisy = GaussianNoise(sigma=20 / 255, seed=0)(x, torch.zeros(64, dtype=torch.long))
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs(float((noisy - x).std()) - 20 / 255) < 0.005


def test_zero_gradient_gives_no_step_and_no_nan(model, data):
    """A hard step (surrogate "none") has a zero gradient: sign steps do not move, MI-FGSM's
    normalisation divides by zero without the guard."""
    x, y = data
    with use_surrogate(model, "none"):
        for attack in (IFGSM(model, EPS, steps=3), MIFGSM(model, EPS, steps=3)):
            x_adv = attack(x, y)
            assert torch.isfinite(x_adv).all()
            assert torch.equal(x_adv, x)


def test_stopping_when_fooled_only_adds_fooled_samples(model, data):
    x, y = data
    plain = PGD(model, 0.15, alpha=0.04, steps=6, seed=1)(x, y)
    stopped = PGD(model, 0.15, alpha=0.04, steps=6, seed=1, stop_when_fooled=True)(x, y)
    with torch.no_grad():
        fooled_plain = model(plain).argmax(1) != y
        fooled_stopped = model(stopped).argmax(1) != y
    assert fooled_plain.any() and not fooled_plain.all()
    assert (fooled_stopped | ~fooled_plain).all()


def test_functional_api(model, data):
    x, y = data
    assert torch.equal(fgsm(model, x, y, 0.1), FGSM(model, 0.1)(x, y))
    a = pgd(model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and (a - x).abs().max() <= 0.1 + 1e-6
    assert accuracy(model, a, y) < accuracy(model, x, y)
    assert torch.equal(pgd(model, x, y, 0.1, 0.03, 3, random_start=False),
                       IFGSM(model, 0.1, 0.03, 3)(x, y))  # fmt: skip


def test_bad_arguments_are_rejected(model):
    with pytest.raises(ValueError, match="eps"):
        PGD(model, -0.1)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, 0.1, steps=-1)
    with pytest.raises(ValueError, match="images"):
        PGD(model, 0.1)(torch.rand(2, 12, 12), torch.zeros(2, dtype=torch.long))


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_point(model, data):
    x, y = data
    x = x[:8]
    torch.manual_seed(0)
    purifier = create_model("purifier", width=4, in_channels=1, timesteps=2)
    nn.init.normal_(purifier.denoiser.head.weight, std=0.1)  # it starts as the identity
    calibrate(purifier, x)
    purifier.eval()
    pipeline = BPDAPipeline(purifier, model)
    x_var = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(pipeline(x_var), y[:8], reduction="sum")
    (grad_bpda,) = torch.autograd.grad(loss, x_var)
    with torch.no_grad():
        purified = purifier(x)[0]
    assert not torch.allclose(purified, x, atol=1e-3)
    p_var = purified.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(p_var), y[:8], reduction="sum")
    (grad_classifier,) = torch.autograd.grad(loss, p_var)
    assert grad_bpda.abs().sum() > 0
    torch.testing.assert_close(grad_bpda, grad_classifier)


def test_huge_gradients_still_give_full_steps():
    """Straight-through surrogates through deep MLF stacks give gradients near the float
    limit; momentum normalisation must neither overflow to a zero step nor produce NaN."""
    x = torch.full((2, 1, 4, 4), 0.5)
    y = torch.zeros(2, dtype=torch.long)

    def steep(images: torch.Tensor) -> torch.Tensor:
        score = 3e37 * images.flatten(1).sum(1, keepdim=True)
        return torch.cat([-score, score], dim=1)

    x_adv = MIFGSM(steep, 0.1, steps=2)(x, y)
    assert torch.isfinite(x_adv).all()
    torch.testing.assert_close(x_adv, torch.full_like(x, 0.6))


def test_autoattack_counts_what_each_component_fooled(model, data):
    x, y = data
    attack = AutoAttack(model, EPS)
    x_adv = attack(x, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = int((correct & (model(x_adv).argmax(1) != y)).sum())
    stages = attack.fooled_by_stage
    assert set(stages) <= {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert stages["apgd-ce"] > 0 and sum(stages.values()) == fooled
    logger = logging.getLogger("auto-attack")  # left as it was found
    assert not logger.handlers and logger.propagate and logger.level == logging.NOTSET


def test_autoattack_without_its_black_box_part_runs_the_white_box_attacks_only(model, data):
    x, y = data
    attack = AutoAttack(model, 0.05, black_box=False)
    attack(x, y)
    assert "apgd-ce" in attack.fooled_by_stage and "square" not in attack.fooled_by_stage
    assert set(attack.fooled_by_stage) <= set(AutoAttack.WHITE_BOX)
