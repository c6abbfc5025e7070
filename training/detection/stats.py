"""Detector statistics: per-image scores from the purifier's outputs, ROC AUC with DeLong's
95 % interval, and a threshold at a false-positive rate set on clean images.

A *score* is larger for images the detector calls adversarial. Every function here takes
plain 1-D arrays (numpy or anything ``np.asarray`` accepts) so the numbers can be checked by
hand; nothing needs torch except ``image_scores``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..evaluation.report import Z95, wilson_interval

QUANTILE = 0.95
# candidate scores, in the order reports list them; "mean" is the purifier's mean noise level
SCORES = ("mean", "q95", "content-calibrated", "residual")
SCORE_LABELS = {
    "mean": "mean noise level",
    "q95": "95th percentile of the noise map",
    "content-calibrated": "mean noise level minus its clean-image prediction from content",
    "residual": "mean |purified - input|",
}


# --------------------------------------------------------------------------- per image


@torch.no_grad()
def image_scores(purifier: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The raw per-image scores of ``x`` (``[B, C, H, W]`` in [0, 1]) and the content
    features the calibrated score is fitted on (``feature:*``)."""
    purified, noise = purifier(x)
    flat = noise.flatten(1).double()
    grad_h = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    grad_v = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    out = {
        "mean": flat.mean(1),
        "q95": torch.quantile(flat, QUANTILE, dim=1),
        "residual": (purified - x).abs().flatten(1).double().mean(1),
        "feature:intensity": x.flatten(1).double().mean(1),
        "feature:gradient": (grad_h + grad_v).double() / 2,
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def content_features(scores: dict[str, np.ndarray]) -> np.ndarray:
    """``[N, 3]``: a constant, the image's mean intensity and mean absolute gradient."""
    intensity = np.asarray(scores["feature:intensity"], dtype=float)
    return np.stack([np.ones_like(intensity), intensity, np.asarray(scores["feature:gradient"])], 1)


def fit_content_model(clean: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Least-squares coefficients predicting the clean mean noise level from content."""
    features = content_features(clean)[rows]
    coef, *_ = np.linalg.lstsq(features, np.asarray(clean["mean"])[rows], rcond=None)
    return coef


def calibrated_scores(
    clean: dict[str, np.ndarray], scores: dict[str, np.ndarray], folds: np.ndarray
) -> np.ndarray:
    """``mean - prediction(content)``, cross-fitted: image ``i`` (of either set) uses the
    model fitted on the clean images of the other fold, so no clean image scores itself."""
    out = np.empty(len(folds))
    features = content_features(scores)
    for fold in (0, 1):
        coef = fit_content_model(clean, np.flatnonzero(folds != fold))
        rows = folds == fold
        out[rows] = np.asarray(scores["mean"])[rows] - features[rows] @ coef
    return out


def finish_scores(
    clean: dict[str, np.ndarray], scores: dict[str, np.ndarray], folds: np.ndarray
) -> dict[str, np.ndarray]:
    """Every score of ``SCORES`` for the images of ``scores`` (clean or adversarial)."""
    out = {k: np.asarray(scores[k], dtype=float) for k in ("mean", "q95", "residual")}
    out["content-calibrated"] = calibrated_scores(clean, scores, folds)
    return {k: out[k] for k in SCORES}


def folds_of(n: int) -> np.ndarray:
    """Fold 0 (calibration: thresholds are set on its clean images) = even indices."""
    return np.arange(n) % 2


# --------------------------------------------------------------------------- ROC


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the area under the ROC
    curve (Mann-Whitney U / (m n))."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("the AUC needs at least one negative and one positive")
    ranks = _midranks(np.concatenate([pos, neg]))
    m = len(pos)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * len(neg)))


def delong_interval(
    negatives: Sequence[float], positives: Sequence[float], z: float = Z95
) -> tuple[float, float, float]:
    """``(auc, low, high)``: DeLong et al.'s (1988) variance of the AUC, computed with
    midranks (Sun & Xu 2014), and the normal interval clipped to [0, 1]. The interval
    collapses to a point when the two sets are perfectly separated."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    auc = roc_auc(neg, pos)
    m, n = len(pos), len(neg)
    combined = _midranks(np.concatenate([pos, neg]))
    v10 = (combined[:m] - _midranks(pos)) / n  # per positive: share of negatives below
    v01 = 1.0 - (combined[m:] - _midranks(neg)) / m  # per negative: share of positives above
    var = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    half = z * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


# --------------------------------------------------------------------------- thresholds


def threshold_at_fpr(clean_scores: Sequence[float], fpr: float = 0.05) -> float:
    """The smallest observed clean score ``t`` such that at most ``floor(fpr * n)`` clean
    scores exceed it; the detector flags a score ``> t``, so its false-positive rate on
    these clean images is at most ``fpr``."""
    values = np.sort(np.asarray(clean_scores, float))
    if len(values) == 0:
        raise ValueError("a threshold needs at least one clean score")
    allowed = math.floor(fpr * len(values) + 1e-9)
    return float(values[len(values) - allowed - 1])


def flagged(scores: Sequence[float], threshold: float) -> np.ndarray:
    return np.asarray(scores, float) > threshold


def rate(k: int, n: int) -> dict[str, Any]:
    """``{"k", "n", "percent", "ci95"}`` of a proportion (percent ``None`` when n = 0)."""
    low, high = wilson_interval(k, n)
    return {
        "k": int(k),
        "n": int(n),
        "percent": 100 * k / n if n else None,
        "ci95": [round(low, 3), round(high, 3)],
    }
