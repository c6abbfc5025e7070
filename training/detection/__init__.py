"""The purifier's noise level as an attack detector (``python -m training detect``).

``stats.py``: per-image scores, ROC AUC with DeLong's interval, thresholds at a false-positive
rate; ``attacks.py``: the worst case over surrogate gradients and the adaptive attackers who
keep the noise level (or the residual) low; ``suite.py``:
``run_detection(DetectionConfig(...))``, one resumable JSON per setting; ``cli.py``: the command.
"""

from .suite import DetectionConfig, run_detection, study_config

__all__ = ["DetectionConfig", "run_detection", "study_config"]
