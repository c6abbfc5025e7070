"""Model registry: ``create_model("senet18_snn", width=16, in_channels=1)``."""

from . import classifiers, purifier  # noqa: F401  (registers the models)
from .purifier import Purifier
from .registry import create_model, is_classifier, list_models, register_model

__all__ = ["Purifier", "create_model", "is_classifier", "list_models", "register_model"]
