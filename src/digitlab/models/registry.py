"""Model registry: `@register_model` + `create_model(name, **kwargs)`, after timm.

A model's name and its full constructor arguments are what a run stores, so any model can
be rebuilt from a weights file alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from digitlab.errors import DigitlabError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Register a model class (or a function building one) under `name`; its signature
    lists the options a run may set and stores."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description or (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")


def model_args(name: str, **kwargs: Any) -> dict[str, Any]:
    """The full constructor arguments (defaults filled in) that create_model would use."""
    factory = _factory(name)
    sig = inspect.signature(factory)
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        known = ", ".join(sig.parameters) or "none"
        raise DigitlabError(
            f"model {name!r} has no option {', '.join(sorted(unknown))}; its options: {known}"
        )
    bound = sig.bind(**kwargs)
    bound.apply_defaults()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}


def _factory(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DigitlabError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    args = model_args(name, **kwargs)
    try:
        return _factory(name)(**args)
    except (TypeError, ValueError) as exc:
        raise DigitlabError(f"model {name!r}: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
