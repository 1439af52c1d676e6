"""Training-only auxiliary heads (deep supervision, as PIDNet, BiSeNet and DDRNet train).

A light classifier on each chosen pyramid level (separable conv → BN → swish → 1×1 classes)
gives the BiFPN a short path from the loss: its gradient no longer has to pass the whole
top-down chain and the head. The heads live beside the model, never inside it: the model's
state dict, its record, ``prepare_for_inference``, export and the parameter/MAC counts are those
of the model alone, so inference is unchanged. ``train.aux_heads.levels`` (e.g. ``[3, 4, 5]``)
turns them on, ``train.aux_heads.weight`` weights their losses.

Tensor flow in training: images → ``model.forward_features`` (P2 … P7) → ``model.forward_head``
(the logits) and, per aux level, head → level-resolution logits → upsampled on the backbone's
grid to the padded input size → cropped to the mask → the distribution loss term.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ..errors import EffdetsegError
from ..layers import SeparableConvBnAct, upsample_to_grid
from .losses import SegmentationLoss


class AuxiliaryHeads(nn.Module):
    """One (separable conv, BN, swish, 1×1 classifier) per level; pyramid in, per-level logits out."""

    def __init__(self, channels: int, levels: Sequence[int], num_classes: int, min_level: int = 2) -> None:
        super().__init__()
        self.levels = [int(level) for level in levels]
        self.indices = [level - min_level for level in self.levels]  # positions in the pyramid list
        self.heads = nn.ModuleList(
            nn.Sequential(SeparableConvBnAct(channels, channels), nn.Conv2d(channels, num_classes, 1)) for _ in self.levels
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(features[i]) for i, head in zip(self.indices, self.heads)]


class DeepSupervision(nn.Module):
    """The model and its auxiliary heads for training: images → (logits, [aux logits per level]).

    ``backbone`` is the model's own (the optimizer's decoder learning rate tells it apart); the
    model is a submodule, so the heads' parameters are the only ones added.
    """

    def __init__(self, model: nn.Module, heads: AuxiliaryHeads) -> None:
        super().__init__()
        self.model = model
        self.heads = heads

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.model.forward_features(images)
        return self.model.forward_head(features, images), self.heads(features)


class DeepSupervisionLoss(nn.Module):
    """``loss(logits) + weight × Σ_levels aux_loss(aux logits)``; plain logits pass straight through.

    The aux loss is the distribution term (cross-entropy, OHEM or focal, with the class weights),
    or the whole loss when there is none: the region terms over every level would cost more than
    they teach. Aux logits are brought to the input's grid (``alpha``) before the loss, so a thin
    object is scored where it is. Its part is logged as ``aux``.
    """

    def __init__(self, criterion: SegmentationLoss, weight: float, alpha: float, strides: Sequence[int]) -> None:
        super().__init__()
        self.criterion = criterion
        self.weight = float(weight)
        self.alpha = float(alpha)
        self.strides = [int(stride) for stride in strides]  # of the aux levels, in the order of their logits

    def forward(
        self, outputs: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(outputs, torch.Tensor):
            return self.criterion(outputs, target)
        logits, aux_logits = outputs
        total, parts = self.criterion(logits, target)
        height, width = target.shape[-2:]
        aux_total = total.new_zeros(())
        for aux, stride in zip(aux_logits, self.strides):
            full = upsample_to_grid(aux.float(), [aux.shape[-2] * stride, aux.shape[-1] * stride], self.alpha)
            full = full[..., :height, :width]
            if self.criterion.distribution is not None and self.criterion.distribution_weight:
                aux_total = aux_total + self.criterion.distribution(full, target)
            else:
                aux_total = aux_total + self.criterion(full, target)[0]
        parts["aux"] = aux_total.detach()
        return total + self.weight * aux_total, parts


def attach_aux_heads(model: nn.Module, aux_cfg: DictConfig | None, num_classes: int) -> DeepSupervision | None:
    """``train.aux_heads`` → the model wrapped with its heads, or None when ``levels`` is empty."""
    if aux_cfg is None or not aux_cfg.get("levels"):
        return None
    weight = aux_cfg.get("weight", 0.4)
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise EffdetsegError(f"train.aux_heads.weight: expected a number > 0, got {weight!r}")
    config = getattr(model, "config", None)
    if not hasattr(model, "forward_features") or config is None:
        raise EffdetsegError(f"train.aux_heads.levels: {type(model).__name__} has no feature pyramid for auxiliary heads")
    levels = list(aux_cfg.levels)
    valid = range(config.min_level, config.max_level + 1)
    if any(not isinstance(level, int) or level not in valid for level in levels) or len(set(levels)) != len(levels):
        raise EffdetsegError(
            f"train.aux_heads.levels: expected distinct pyramid levels from {valid.start} to {valid.stop - 1}, got {levels}"
        )
    heads = AuxiliaryHeads(config.bifpn_channels, levels, num_classes, config.min_level)
    return DeepSupervision(model, heads)


def deep_supervision_loss(criterion: SegmentationLoss, wrapped: DeepSupervision, weight: float) -> DeepSupervisionLoss:
    """The loss for a :class:`DeepSupervision` model: its levels' strides, its backbone's grid."""
    return DeepSupervisionLoss(criterion, weight, float(wrapped.model.grid_alpha), [2**level for level in wrapped.heads.levels])
