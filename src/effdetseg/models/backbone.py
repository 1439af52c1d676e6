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
        self.grid_alpha: float | None = grid_alpha(self.body)
        self.name = name
        self.pretrained_cfg: dict = dict(self.body.pretrained_cfg)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def layers_through_stride(self, stride: int) -> list[nn.Module]:
        """The body's layers in forward order, from the stem up to and including the deepest one
        whose output is at ``stride`` (EfficientNet, stride 4: conv_stem, bn1, blocks.0, blocks.1)."""
        names = [info["module"] for info in self.body.feature_info.info if info["reduction"] == stride]
        if not names:
            reductions = sorted({info["reduction"] for info in self.body.feature_info.info})
            raise ValueError(f"backbone {self.name!r} has no layer with output stride {stride} (has {reductions})")
        target, layers = names[-1], []

        def walk(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                path = prefix + name
                if path == target:
                    layers.append(child)
                    return
                if target.startswith(path + "."):  # the target is inside: its earlier siblings first
                    walk(child, path + ".")
                    return
                layers.append(child)

        walk(self.body, "")
        return layers


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


def grid_alpha(body: nn.Module) -> float | None:
    """Where the backbone's strided layers put their pixels: level ``l``'s pixel ``j`` is centred at
    input ``2**l * j + alpha * (2**l - 1)`` (see :mod:`effdetseg.layers.resample`).

    Each strided convolution or pooling of stride ``s``, kernel ``k`` and padding ``p`` before
    its first input pixel centres output ``j`` at ``s·j + (k − 1)/2 − p``, i.e. alpha
    ``((k − 1)/2 − p) / (s − 1)``; timm's ``…Same`` layers pad as TensorFlow's "SAME" does on even
    sizes (``⌊(k − s)/2⌋`` before). None when the layers disagree (no single grid to align to).
    """
    alphas = set()
    for module in body.modules():
        if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        for axis in (0, 1):
            stride = _pair(module.stride)[axis]
            if stride <= 1:
                continue
            kernel = (_pair(module.kernel_size)[axis] - 1) * _pair(getattr(module, "dilation", 1))[axis] + 1
            if type(module).__name__.endswith("Same"):  # timm's dynamic TF "SAME" padding
                before = max(kernel - stride, 0) // 2
            else:
                before = _pair(module.padding)[axis] if not isinstance(module.padding, str) else (kernel - 1) // 2
            alphas.add(((kernel - 1) / 2 - before) / (stride - 1))
    return alphas.pop() if len(alphas) == 1 else None


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))
