"""Model registry: variant functions register under their name; ``create_model`` builds by name.

The registry imports no model module: the modules register into it (variants with
``register_model``, the builder of names no variant has — timm classifiers — with
``register_fallback``), so the dependency runs one way, model modules → registry.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_families: dict[str, str] = {}
_fallback: Callable[..., nn.Module] | None = None  # builds names no variant has (timm classifiers)


def register_model(family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a variant function under its own name, in a family (``efficientdet_seg`` …)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _entrypoints[fn.__name__] = fn
        _families[fn.__name__] = family
        return fn

    return wrap


def register_fallback(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register the builder ``create_model`` calls, as ``builder(name, **kwargs)``, for a name no
    variant has (``models/classifier.py``: any timm classifier)."""
    global _fallback
    _fallback = builder
    return builder


def list_models(family: str | None = None) -> list[str]:
    """Registered variant names in registration order, optionally of one family."""
    return [name for name in _entrypoints if family is None or _families[name] == family]


def model_family(name: str) -> str:
    return _families.get(name, "timm_classifier")


def is_model(name: str) -> bool:
    return name in _entrypoints


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered variant; any other timm model name builds a timm classifier.

    ``num_classes`` defaults to the variant's own (21 for segmentation, 1000 for classifiers).
    ``kwargs`` are the variant's overrides (``backbone``, ``backbone_pretrained``,
    ``bifpn_channels`` …). The returned module carries ``model_config``: everything needed to
    rebuild it, which checkpoints store.
    """
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in _entrypoints:
        model = _entrypoints[name](**kwargs)
    elif _fallback is not None:
        model = _fallback(name, **kwargs)
    else:
        raise ValueError(f"unknown model {name!r}: not an effdetseg variant (see `effdetseg models`)")
    # A path to local weights is not part of the architecture: a rebuilt model gets its weights
    # from the checkpoint instead.
    overrides = {k: v for k, v in kwargs.items() if k not in ("num_classes", "backbone_pretrained", "pretrained")}
    model.model_config = {"name": name, "num_classes": model.num_classes, **overrides}
    return model
