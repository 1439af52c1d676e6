"""Model registry: variant functions register under their name; ``create_model`` builds by name."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_families: dict[str, str] = {}


def register_model(family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a variant function under its own name, in a family (``efficientdet_seg`` …)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _entrypoints[fn.__name__] = fn
        _families[fn.__name__] = family
        return fn

    return wrap


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
    else:
        from .classifier import timm_classifier

        model = timm_classifier(name, **kwargs)
    # A path to local weights is not part of the architecture: a rebuilt model gets its weights
    # from the checkpoint instead.
    overrides = {k: v for k, v in kwargs.items() if k not in ("num_classes", "backbone_pretrained", "pretrained")}
    model.model_config = {"name": name, "num_classes": model.num_classes, **overrides}
    return model
