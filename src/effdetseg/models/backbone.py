"""timm feature extractors at strides 4, 8, 16, 32 (C2–C5)."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .weights import load_backbone_weights

BACKBONE_STRIDES = (4, 8, 16, 32)

Pretrained = bool | str | Path


class Backbone(nn.Module):
    """A timm ``features_only`` model returning the maps at strides 4, 8, 16 and 32.

    ``pretrained``: False (random init), True (timm's hub weights, needs internet) or the path
    of a local state dict in timm or EfficientNet-PyTorch naming.
    """

    def __init__(self, name: str, pretrained: Pretrained = False) -> None:
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(f"backbone {name!r} is not a timm model")
        out_indices = _stride_indices(name)
        self.body = timm.create_model(
            name, features_only=True, out_indices=out_indices, pretrained=pretrained is True
        )
        if isinstance(pretrained, (str, Path)):
            load_backbone_weights(self.body, pretrained, features_only=True)
        self.channels: list[int] = self.body.feature_info.channels()
        self.name = name
        self.pretrained_cfg: dict = dict(self.body.pretrained_cfg)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def _stride_indices(name: str) -> tuple[int, ...]:
    """The feature indices of ``name`` whose strides are 4, 8, 16 and 32 (built on meta: no cost)."""
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False)
    reductions = probe.feature_info.reduction()
    indices = []
    for stride in BACKBONE_STRIDES:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(f"backbone {name!r} has no feature map at stride {stride} (has {reductions})")
        indices.append(matches[-1])  # the deepest map at that stride
    return tuple(indices)
