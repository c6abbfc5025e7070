"""``build_attack`` and ``Budget``: paper defaults, the default step size reaching the
ball's edge at any eps, restarts, EOT, and budgets an attack cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.attacks import PGD, SPECS, Budget, build_attack, default_step_size, pgd, resolve


@pytest.fixture(scope="module")
def linear() -> nn.Module:
    """A linear classifier: its input gradient never vanishes, so every pixel moves."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(16, 1, 8, 8, generator=generator)  # far from 0 and 1: no clipping
    return x, torch.randint(0, 10, (16,), generator=generator)


@pytest.mark.parametrize("name", ["ifgsm", "mifgsm", "pgd", "bpda-eot"])
@pytest.mark.parametrize("eps", [0.01, 8 / 255, 0.1, 0.3])
def test_default_step_size_reaches_the_edge_of_the_ball(linear, batch, name: str, eps: float):
    """(CW's capped margin stops pushing a sample once it is misclassified, by design.)"""
    x, y = batch
    x_adv = build_attack(name, linear, Budget(eps))(x, y)
    distance = (x_adv - x).abs().flatten(1).amax(1)
    assert torch.allclose(distance, torch.full_like(distance, eps), atol=1e-6)


def test_the_papers_fixed_step_falls_short_at_a_large_eps(linear, batch):
    """What the default replaced: 7 steps of 2/255 end inside the ball at eps 0.1."""
    x, y = batch
    x_adv = build_attack("ifgsm", linear, Budget(0.1, step_size=2 / 255))(x, y)
    assert (x_adv - x).abs().max() == pytest.approx(7 * 2 / 255, abs=1e-6)
    assert (x_adv - x).abs().max() < 0.1


@pytest.mark.parametrize(
    ("name", "steps"),
    [("ifgsm", 7), ("mifgsm", 7), ("pgd", 7), ("cw", 50), ("bpda-eot", 20), ("apgd-ce", 100),
     ("apgd-t", 100), ("fab-t", 100), ("square", 5000)],
)  # fmt: skip
def test_paper_step_counts_are_the_defaults(name: str, steps: int):
    budget = resolve(name, Budget(8 / 255))
    assert budget.steps == steps == SPECS[name].steps
    if SPECS[name].step_size:
        assert budget.step_size == pytest.approx(2.5 * (8 / 255) / steps)
    else:
        assert budget.step_size is None
    assert budget.restarts == 1 and budget.eot_samples == 1 and budget.sigma is None


def test_the_resolved_budget_is_recorded_in_the_settings():
    attack = build_attack("pgd", None, Budget(0.1, steps=10, eot_samples=4), seed=3)
    settings = attack.settings()
    assert settings["budget"] == {
        "eps": 0.1, "steps": 10, "step_size": default_step_size(0.1, 10), "restarts": 1,
        "eot_samples": 4, "sigma": None,
    }  # fmt: skip
    assert settings["alpha"] == settings["budget"]["step_size"] and settings["steps"] == 10
    assert settings["eot_samples"] == 4 and settings["seed"] == 3
    noise = build_attack("gaussian", None, Budget(0.1, sigma=0.2)).settings()
    assert noise["sigma"] == 0.2 and noise["budget"]["eps"] == 0.0 and "eps" not in noise
    # EOT is recorded as spent only by attacks that average gradients
    assert build_attack("fgsm", None, Budget(0.1, eot_samples=5)).budget.eot_samples == 1


@pytest.mark.parametrize(
    ("name", "budget", "message"),
    [
        ("fgsm", Budget(0.1, steps=3), "takes no step count"),
        ("apgd-ce", Budget(0.1, step_size=0.01), "takes no step size"),
        ("ifgsm", Budget(0.1, restarts=2), "deterministic"),
        ("nope", Budget(0.1), "unknown attack 'nope'"),
    ],
)
def test_budgets_an_attack_cannot_take_are_refused(name: str, budget: Budget, message: str):
    with pytest.raises(ValueError, match=message):
        build_attack(name, None, budget)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"eps": -0.1}, "eps"), ({"eps": 0.1, "steps": -1}, "steps"),
     ({"eps": 0.1, "step_size": -0.01}, "step_size"), ({"eps": 0.1, "restarts": 0}, "restarts")],
)  # fmt: skip
def test_bad_budgets_are_refused(fields: dict, message: str):
    with pytest.raises(ValueError, match=message):
        Budget(**fields)


def test_restarts_attack_only_the_survivors_with_new_seeds(linear, batch):
    x, y = batch
    budget = Budget(0.02, steps=2, step_size=0.001)  # weak: most samples survive a restart
    restarted = build_attack("pgd", linear, budget.replace(restarts=3), seed=10)
    assert [a.seed for a in restarted.attacks] == [10, 11, 12]
    assert restarted.settings()["restarts"] == 3
    first = build_attack("pgd", linear, budget, seed=10)(x, y)
    combined = restarted(x, y)
    with torch.no_grad():
        fooled_first = linear(first).argmax(1) != y
    # a sample the first run fooled keeps its example; the others were attacked again
    assert torch.equal(combined[fooled_first], first[fooled_first])
    assert not torch.equal(combined[~fooled_first], first[~fooled_first])


def test_a_generator_draws_the_random_start(linear, batch):
    x, y = batch
    a = build_attack("pgd", linear, Budget(0.1), generator=torch.Generator().manual_seed(5))(x, y)
    b = pgd(linear, x, y, 0.1, None, 7, generator=torch.Generator().manual_seed(5))
    c = PGD(linear, 0.1, default_step_size(0.1, 7), 7, seed=5)(x, y)
    assert torch.equal(a, b) and torch.equal(a, c)
