"""EfficientNet classifiers (timm), for ``effdetseg classify``."""
from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from .registry import register_fallback, register_model
from .weights import load_backbone_weights


@register_fallback
def timm_classifier(name: str, num_classes: int = 1000, pretrained: bool | str | Path = False, **kwargs) -> nn.Module:
    """Any timm classifier; ``pretrained`` may be a local file in timm or EfficientNet-PyTorch naming."""
    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}: not an effdetseg variant (see `effdetseg models`) nor a timm model")
    model = timm.create_model(name, num_classes=num_classes, pretrained=pretrained is True, **kwargs)
    if isinstance(pretrained, (str, Path)):
        load_backbone_weights(model, pretrained, features_only=False)
    return model


def _register_efficientnet(phi: int) -> None:
    name = f"efficientnet_b{phi}"

    def variant(num_classes: int = 1000, **kwargs) -> nn.Module:
        return timm_classifier(name, num_classes=num_classes, **kwargs)

    variant.__name__ = name
    variant.__doc__ = f"EfficientNet-B{phi} ImageNet classifier (timm)."
    register_model("efficientnet")(variant)


for _phi in range(8):
    _register_efficientnet(_phi)
