"""The attack engine: one (defence, threat model, attack, budget) setting on given images.

Every white-box attack on a spiking model is repeated with several surrogate gradient
shapes and a sample counts as robust only if it survives all of them (and, for transfer,
every source model). Attacks with a random part are seeded per batch, so a run is
reproducible. ``input_gradient_stats`` reports the raw input gradient the attacks see.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACKS, Budget, build_attack, margin_loss, resolve
from ..snn import use_surrogate
from ..threat_models import NOISE, Defence, is_random
from . import report

DEFAULT_SURROGATES = ("rect1", "rect0.5", "rect2", "sigmoid4", "ste")
BOUNDED = frozenset(ATTACKS) - {"gaussian"}


def _uses_model(attack: str) -> bool:
    return attack != "gaussian"


def _uses_gradients(attack: str) -> bool:
    return ATTACKS[attack].uses_gradients


@contextlib.contextmanager
def surrogate_gradient(model: Any, shape: str | None):
    """``model`` with the surrogate gradient ``shape`` (None, or a model that is not a
    module: as it is)."""
    if shape is None or not isinstance(model, nn.Module):
        yield
    else:
        with use_surrogate(model, shape):
            yield


def _batch_seed(seed: int, batch: int) -> int:
    return seed * 1_000_003 + batch


def _attack_survivors(
    attacked: Any,
    judge: nn.Module,
    attack: str,
    x: torch.Tensor,
    y: torch.Tensor,
    alive: torch.Tensor,
    *,
    budget: Budget,
    surrogates: Sequence[str],
    fooled_by: Counter,
    fooled_by_stage: Counter,
    tag: str,
    stop_when_fooled: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Attacks the still-robust samples with each surrogate gradient in turn; returns the
    mask of samples ``judge`` (the defended pipeline) still classifies correctly. A cascade
    (AutoAttack) also counts what each of its components fooled, in ``fooled_by_stage``."""
    alive = alive.clone()
    shapes: Sequence[str | None] = surrogates if _uses_gradients(attack) else (None,)
    for shape in shapes:
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        adversary = build_attack(
            attack, attacked, budget, stop_when_fooled=stop_when_fooled, seed=seed
        )
        if shape != shapes[0] and hasattr(adversary, "black_box"):
            adversary.black_box = False  # a cascade's gradient-free part ran with the first
        with surrogate_gradient(attacked, shape):
            x_adv = adversary(x[idx], y[idx])
        if attack in BOUNDED:
            excess, eps = float((x_adv - x[idx]).abs().max()), budget.eps
            if excess > eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
                raise RuntimeError(f"{attack} left its eps ball ({excess:.6f} > {eps})")
        with torch.no_grad():
            still = judge(x_adv).argmax(1) == y[idx]
        fooled_by[f"{tag}{shape or attack}"] += int((~still).sum())
        for component, count in getattr(adversary, "fooled_by_stage", {}).items():
            fooled_by_stage[f"{tag}{shape or attack}/{component}"] += count
        alive[idx[~still]] = False
    return alive


class _Tally:
    """The counts of the batches an evaluation has finished, as a partial file holds them."""

    def __init__(self, record: dict[str, Any] | None = None):
        record = record or {}
        self.batches = int(record.get("batches", 0))
        self.clean_correct = int(record.get("clean_correct", 0))
        self.robust_correct = int(record.get("robust_correct", 0))
        self.per_source: Counter = Counter(record.get("per_source", {}))
        self.fooled_by: Counter = Counter(record.get("fooled_by", {}))
        self.fooled_by_stage: Counter = Counter(record.get("fooled_by_stage", {}))
        self.eot_used: dict[str, int] = dict(record.get("eot_used", {}))
        self.seconds = float(record.get("seconds", 0.0))  # spent before this run

    @classmethod
    def load(cls, path: Path | None, n: int, batch_size: int) -> _Tally:
        """The tallies in ``path`` when it covers these images in these batches, else none."""
        if path is None or not path.exists():
            return cls()
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if record.get("n") != n or record.get("batch_size") != batch_size:
            return cls()
        return cls(record)

    def save(self, path: Path, n: int, batch_size: int, seconds_now: float) -> None:
        record = {
            "n": n, "batch_size": batch_size, "batches": self.batches,
            "clean_correct": self.clean_correct, "robust_correct": self.robust_correct,
            "per_source": dict(self.per_source), "fooled_by": dict(self.fooled_by),
            "fooled_by_stage": dict(self.fooled_by_stage),
            "eot_used": self.eot_used, "seconds": round(self.seconds + seconds_now, 3),
        }  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)


def evaluate(
    defence: Defence,
    threat: str,
    attack: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    budget: Budget,
    sources: dict[str, nn.Module] | None = None,
    surrogates: Sequence[str] = DEFAULT_SURROGATES,
    seed: int = 0,
    batch_size: int = 100,
    partial: Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Clean and robust accuracy of ``defence`` under one attack and threat model.

    ``partial``: a file holding the tallies of the batches done so far, rewritten after
    each batch (then ``on_batch(done, total)`` runs), read at the start to skip the batches
    it covers; every batch is seeded by its index, so a resumed run gives the result an
    uninterrupted one would. The caller removes it once the result is written.

    ``images`` are in [0, 1] on the models' device. For ``transfer`` the attack runs on
    each model of ``sources``; the result also lists each source's own robust accuracy.
    ``budget.eot_samples`` is used for random pipelines only (a deterministic one gets 1);
    the result records the resolved budget and the EOT samples each model got. This
    function's length is the two threat-model branches of one batch loop, kept together
    so the accounting of clean, robust and per-source counts reads in one place."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {sorted(ATTACKS)}")
    canonical = defence.canonical_threat(threat, _uses_model(attack))
    if canonical == "transfer" and not sources:
        raise ValueError("the transfer threat model needs at least one source model")
    pipeline = defence.pipeline
    start = time.perf_counter()
    n = int(labels.numel())
    tally = _Tally.load(partial, n, batch_size)
    total = -(-n // batch_size)
    for b, begin in enumerate(range(0, n, batch_size)):
        if b < tally.batches:
            continue
        x, y = images[begin : begin + batch_size], labels[begin : begin + batch_size]
        with torch.no_grad():
            correct = pipeline(x).argmax(1) == y
        tally.clean_correct += int(correct.sum())
        fooled_by, eot_used = tally.fooled_by, tally.eot_used
        kwargs = {
            "surrogates": surrogates, "fooled_by": fooled_by,
            "fooled_by_stage": tally.fooled_by_stage, "seed": _batch_seed(seed, b),
        }  # fmt: skip
        if canonical == "transfer":
            survived = correct.clone()
            for name, source in (sources or {}).items():
                eot = budget.eot_samples if is_random(source, x[:4]) else 1
                eot_used[name] = max(eot, eot_used.get(name, 1))
                alive = _attack_survivors(
                    source, pipeline, attack, x, y, correct, tag=f"{name}:",
                    budget=budget.replace(eot_samples=eot), **kwargs,
                )  # fmt: skip
                tally.per_source[name] += int(alive.sum())
                survived &= alive
        else:
            attacked = pipeline if canonical == NOISE else defence.attacked_model(canonical)
            eot = budget.eot_samples if is_random(pipeline, x[:4]) else 1
            eot_used[defence.name] = max(eot, eot_used.get(defence.name, 1))
            survived = _attack_survivors(
                attacked, pipeline, attack, x, y, correct, tag="",
                budget=budget.replace(eot_samples=eot),
                stop_when_fooled=defence.matches_attacked(canonical), **kwargs,
            )  # fmt: skip
        tally.robust_correct += int(survived.sum())
        tally.batches = b + 1
        if partial is not None:
            tally.save(partial, n, batch_size, time.perf_counter() - start)
            if on_batch is not None:
                on_batch(tally.batches, total)
    result: dict[str, Any] = {
        "defence": defence.name,
        "threat_model": canonical,
        "attack": attack,
        "eps": float(budget.eps),
        "eps_255": round(float(budget.eps) * 255, 4),
        "steps": budget.steps,
        "budget": resolve(attack, budget.replace(eot_samples=1)).to_json(),
        "n": n,
        **report.accuracy_fields("clean", tally.clean_correct, n),
        **report.accuracy_fields("robust", tally.robust_correct, n),
        "fooled_by": dict(tally.fooled_by),
        **({"fooled_by_stage": dict(tally.fooled_by_stage)} if tally.fooled_by_stage else {}),
        "eot_samples": tally.eot_used,
        "seconds": round(tally.seconds + time.perf_counter() - start, 3),
    }
    if canonical == "transfer":
        result["per_source"] = {
            name: report.accuracy_fields("robust", tally.per_source[name], n)
            for name in sources or {}
        }
    return result


def input_gradient_stats(
    model: Any, images: torch.Tensor, labels: torch.Tensor, surrogate: str
) -> dict[str, float]:
    """Raw input gradient of the margin loss (which, unlike cross-entropy, does not
    saturate): fraction of samples whose gradient is all zero or has a non-finite entry."""
    with surrogate_gradient(model, surrogate), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(margin_loss(model(x), labels).sum(), x)
    flat = grad.flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = (flat == 0).all(1)
    return {
        "n": int(labels.numel()),
        "zero_fraction": float(zero.float().mean()),
        "nonfinite_fraction": float((~finite).float().mean()),
        "mean_abs": float(flat[finite].abs().mean()) if finite.any() else float("nan"),
    }
