"""``@register_model`` + ``create_model(name, **kwargs)``: a new architecture is one function."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs) -> nn.Module:
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}") from None
    model = factory(**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def list_models() -> list[str]:
    return sorted(_MODELS)


def is_classifier(name: str) -> bool:
    """True for registered models that map images to logits (everything but the purifier)."""
    return name in _MODELS and name != "purifier"
