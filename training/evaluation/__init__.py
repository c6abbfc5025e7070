"""Evaluation: attack defences under several threat models.

Defences: ``none`` (the classifier alone), ``adv-training`` (the PGD adversarially trained
classifier alone), ``purifier`` (purifier -> classifier) and ``purifier+ols`` (purifier ->
OLS classifier), plus any named in ``SuiteConfig.extra_defences``. Threat models: see
``training.threat_models``.

* ``config``: ``SuiteConfig`` (every setting, attack budgets included) and its validation.
* ``engine``: ``evaluate``, one setting on given images (the attack engine).
* ``loading``: checkpoints, defences, transfer sources, the dataset.
* ``suite``: ``run_suite``: plan the grid, run or reuse each setting, write the report.
* ``report``: statistics, sanity checks, ``summary.md`` and its plots.
* ``cli``: ``python -m training evaluate``, generated from ``SuiteConfig``.
"""

from .config import DEFAULT_ATTACKS, SuiteConfig, validate
from .engine import DEFAULT_SURROGATES, evaluate, input_gradient_stats
from .suite import SuiteReport, plan_grid, run_suite

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_SURROGATES",
    "SuiteConfig",
    "SuiteReport",
    "evaluate",
    "input_gradient_stats",
    "plan_grid",
    "run_suite",
    "validate",
]
