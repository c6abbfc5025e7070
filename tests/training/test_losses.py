"""Losses of eqs. 7-10 and online label smoothing against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    OnlineLabelSmoothing,
    PurifierLossWeights,
    asymmetric_loss,
    charbonnier,
    purifier_loss,
    reconstruction_loss,
    tv_loss,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# errors x_hat - x of 0, 0.4, -0.4, 0.72 on a [1, 1, 2, 2] image
X = t([[[[0.5, 0.5], [0.5, 0.0]]]])
X_HAT = t([[[[0.5, 0.9], [0.1, 0.72]]]])


def test_charbonnier_by_hand() -> None:
    # c = 0.3: sqrt(0 + 0.09) = 0.3, sqrt(0.16 + 0.09) = 0.5 (twice),
    # sqrt(0.5184 + 0.09) = sqrt(0.6084) = 0.78; mean = 2.08 / 4 = 0.52
    assert charbonnier(X_HAT, X, c=0.3).item() == pytest.approx(0.52)
    # the default c = 1e-3: zero error costs exactly c
    assert charbonnier(X, X).item() == pytest.approx(1e-3)


def test_reconstruction_loss_by_hand() -> None:
    # MSE = (0 + 0.16 + 0.16 + 0.5184) / 4 = 0.2096; Charbonnier (c = 0.3) = 0.52
    # beta = 0.25: 0.25 * 0.52 + 0.75 * 0.2096 = 0.13 + 0.1572 = 0.2872
    assert reconstruction_loss(X_HAT, X, beta=0.25, c=0.3).item() == pytest.approx(0.2872)
    assert reconstruction_loss(X_HAT, X, beta=1.0, c=0.3).item() == pytest.approx(0.52)
    assert reconstruction_loss(X_HAT, X, beta=0.0, c=0.3).item() == pytest.approx(0.2096)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_reconstruction_loss_rejects_beta_outside_unit_interval(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        reconstruction_loss(X_HAT, X, beta=beta)


SIGMA = t([[[[0.5, 0.5], [0.5, 0.5]]]])
SIGMA_HAT = t([[[[0.3, 0.7], [0.5, 0.9]]]])


def test_asymmetric_loss_by_hand() -> None:
    # gamma = 0.3; errors -0.2 (under: weight 0.7), +0.2 (over: 0.3), 0, +0.4 (over: 0.3)
    # 0.7 * 0.04 + 0.3 * 0.04 + 0 + 0.3 * 0.16 = 0.028 + 0.012 + 0.048 = 0.088; / 4 = 0.022
    assert asymmetric_loss(SIGMA_HAT, SIGMA).item() == pytest.approx(0.022)


def test_asymmetric_loss_weighs_under_estimation_by_1_minus_gamma() -> None:
    under = asymmetric_loss(t([0.4]), t([0.5]), gamma=0.3)  # 0.7 * 0.01
    over = asymmetric_loss(t([0.6]), t([0.5]), gamma=0.3)  # 0.3 * 0.01
    assert under.item() == pytest.approx(0.007)
    assert over.item() == pytest.approx(0.003)


def test_tv_loss_by_hand() -> None:
    # [[0, 1, 3], [2, 2, 2]]: horizontal differences 1, 2, 0, 0 -> mean of squares 5/4;
    # vertical differences 2, 1, -1 -> mean of squares 6/3 = 2; total 3.25
    assert tv_loss(t([[[[0, 1, 3], [2, 2, 2]]]])).item() == pytest.approx(3.25)
    assert tv_loss(torch.full((2, 1, 4, 4), 0.7)).item() == 0.0


def test_combined_loss_eq10_by_hand() -> None:
    x = t([[[[0.2, 0.4], [0.6, 0.8]]]])
    x_hat = x + t([[[[0.1, -0.2], [0.3, 0.0]]]])
    # beta = 0 (pure L2): rec = (0.01 + 0.04 + 0.09 + 0) / 4 = 0.035
    # asym = 0.022 (above); TV of [[0.3, 0.7], [0.5, 0.9]]: horizontal 0.4, 0.4 -> 0.16,
    # vertical 0.2, 0.2 -> 0.04; tv = 0.2
    # L = 0.035 + 0.5 * 0.022 + 0.05 * 0.2 = 0.035 + 0.011 + 0.01 = 0.056
    terms = purifier_loss(x_hat, x, SIGMA_HAT, SIGMA, PurifierLossWeights(beta=0.0))
    assert terms["rec"].item() == pytest.approx(0.035)
    assert terms["asym"].item() == pytest.approx(0.022)
    assert terms["tv"].item() == pytest.approx(0.2)
    assert terms["loss"].item() == pytest.approx(0.056)


def test_combined_loss_defaults_are_cbdnets_weights() -> None:
    x = t([[[[0.2, 0.4], [0.6, 0.8]]]])
    # default beta = 1 (Charbonnier, c = 1e-3): a perfect reconstruction costs 0.001
    # L = 0.001 + 0.5 * 0.022 + 0.05 * 0.2 = 0.022
    terms = purifier_loss(x, x, SIGMA_HAT, SIGMA)
    assert terms["loss"].item() == pytest.approx(0.022)


def _logits(*probabilities: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given distributions."""
    return t(probabilities).log()


def test_online_label_smoothing_epoch_zero_is_plain_label_smoothing() -> None:
    ols = OnlineLabelSmoothing(num_classes=3, alpha=0.5, smoothing=0.1)
    # soft labels: 0.9 on the diagonal, 0.1 / 2 = 0.05 elsewhere
    expected = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    assert ols.soft_labels.tolist() == [pytest.approx(row) for row in expected]
    # p = (0.5, 0.25, 0.25), target 0: hard CE = ln 2;
    # soft CE = 0.9 ln 2 + 0.05 * 2 ln 2 + 0.05 * 2 ln 2 = 1.1 ln 2
    # loss = 0.5 ln 2 + 0.5 * 1.1 ln 2 = 1.05 ln 2
    loss = ols.eval()(_logits([0.5, 0.25, 0.25]).float(), torch.tensor([0]))
    assert loss.item() == pytest.approx(1.05 * math.log(2), rel=1e-6)


def test_online_label_smoothing_learns_mean_distribution_of_correct_samples() -> None:
    ols = OnlineLabelSmoothing(num_classes=3, alpha=0.5, smoothing=0.1).train()
    a, b = [0.5, 0.25, 0.25], [0.7, 0.2, 0.1]  # class 0, both correct
    c, d = [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]  # class 1: c is wrong (argmax 0), d is right
    ols(_logits(a, c).float(), torch.tensor([0, 1]))
    ols(_logits(b, d).float(), torch.tensor([0, 1]))
    ols.next_epoch()
    # S[0] = mean(a, b) = (0.6, 0.225, 0.175); S[1] = d (c excluded);
    # class 2 had no correct sample and keeps its epoch-0 row
    expected = [[0.6, 0.225, 0.175], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]]
    assert ols.soft_labels.tolist() == [pytest.approx(row) for row in expected]
    assert ols.counts.sum() == 0 and ols.accumulated.abs().sum() == 0

    # the next epoch's loss uses the learnt row: p = (0.5, 0.25, 0.25), target 0:
    # soft CE = 0.6 ln 2 + 0.225 * 2 ln 2 + 0.175 * 2 ln 2 = 1.4 ln 2;
    # loss = 0.5 ln 2 + 0.5 * 1.4 ln 2 = 1.2 ln 2
    ols.eval()
    loss = ols(_logits(a).float(), torch.tensor([0]))
    assert loss.item() == pytest.approx(1.2 * math.log(2), rel=1e-6)


def test_online_label_smoothing_only_learns_in_train_mode() -> None:
    ols = OnlineLabelSmoothing(num_classes=3).eval()
    before = ols.soft_labels.clone()
    ols(_logits([0.1, 0.8, 0.1]).float(), torch.tensor([1]))
    ols.next_epoch()
    assert torch.equal(ols.soft_labels, before)
