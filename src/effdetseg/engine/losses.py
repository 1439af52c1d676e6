"""The training loss: distribution (cross-entropy) + region (soft-IoU, soft-Dice or Lovász-softmax), each weighted.

Cross-entropy scores every pixel on its own; the region term scores each class's overlap as a
whole, so small objects and rare classes count as much as large ones. Ignored pixels (255) are
left out of both.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..configs.targets import instantiate
from ..errors import EffdetsegError

REGION_LOSS_TYPES = ("iou", "dice")


class RegionLoss(nn.Module):
    """Soft-IoU (Jaccard) or soft-Dice loss over classes, from softmax probabilities.

    Intersections and unions are summed over the whole batch, then ``1 - score`` is averaged over
    the classes present in the batch's targets (a class absent from the batch has no region to
    overlap; cross-entropy already penalises predicting it). Pixels equal to ``ignore_index`` are
    excluded from both prediction and target.
    """

    def __init__(self, loss_type: str = "iou", ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        if loss_type not in REGION_LOSS_TYPES:
            raise EffdetsegError(f"train.loss.region.loss_type: expected one of {REGION_LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1)
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        pred_area = (probs * valid.unsqueeze(1)).sum((0, 2, 3))
        # Each pixel's probability of its own class, summed per class: the intersection, without
        # a one-hot tensor of the batch (num_classes × the batch's pixels, the costly part).
        own = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1) * valid
        intersection = probs.new_zeros(num_classes).index_add(0, safe_target.flatten(), own.flatten())
        target_area = torch.bincount(safe_target[valid], minlength=num_classes).to(probs.dtype)
        if self.loss_type == "iou":
            union = pred_area + target_area - intersection
            score = (intersection + self.smooth) / (union + self.smooth)
        else:
            score = (2 * intersection + self.smooth) / (pred_area + target_area + self.smooth)
        present = target_area > 0
        if not present.any():  # every pixel ignored: nothing to overlap, no gradient
            return logits.sum() * 0.0
        return (1.0 - score)[present].mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (Berman et al., CVPR 2018): the tight convex surrogate of the IoU loss.

    Per class, the pixels' errors ``|1[class] - p_class|`` are sorted and weighted by how much each
    one changes the class's Jaccard index, so the loss equals ``1 - IoU`` wherever the prediction is
    hard; unlike the soft IoU its gradient does not fade on the pixels that decide a thin class's
    overlap. Pixels of the whole batch form one set per class; the loss is averaged over the classes
    present in the batch's targets, ``ignore_index`` pixels left out.

    ``stride`` > 1 scores every stride-th pixel of each row and column: the sort over the batch's
    pixels is most of the term's cost (CamVid, 8 × 256² crops on a 2-core CPU: longer than the
    network's forward pass), and the IoU of a regular sample of pixels estimates the whole one's.
    """

    def __init__(self, ignore_index: int = 255, stride: int = 1) -> None:
        super().__init__()
        if int(stride) < 1:
            raise EffdetsegError(f"train.loss.region.stride: expected a positive integer, got {stride!r}")
        self.ignore_index = ignore_index
        self.stride = int(stride)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            logits, target = logits[..., :: self.stride, :: self.stride], target[..., :: self.stride, :: self.stride]
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
        target = target.reshape(-1)
        valid = target != self.ignore_index
        if not valid.any():  # every pixel ignored: no gradient
            return logits.sum() * 0.0
        probs, target = probs[valid], target[valid]
        present = torch.bincount(target, minlength=num_classes) > 0
        foreground = F.one_hot(target, num_classes)[:, present].to(probs.dtype)
        errors = (foreground - probs[:, present]).abs()
        errors, order = errors.sort(dim=0, descending=True)
        foreground = foreground.gather(0, order)
        # The Jaccard loss after the k largest errors of each class, and its increments (lovasz_grad).
        total = foreground.sum(0)
        jaccard = 1.0 - (total - foreground.cumsum(0)) / (total + (1.0 - foreground).cumsum(0))
        increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        return (errors * increments).sum(0).mean()


class SegmentationLoss(nn.Module):
    """``distribution_weight × distribution(logits, target) + region_weight × region(logits, target)``.

    Returns the total and its parts (detached) for logging.
    """

    def __init__(
        self,
        distribution: nn.Module | None,
        region: nn.Module | None,
        distribution_weight: float = 1.0,
        region_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if distribution is None and region is None:
            raise EffdetsegError("train.loss: both distribution and region are disabled; keep at least one")
        self.distribution = distribution
        self.region = region
        self.distribution_weight = float(distribution_weight)
        self.region_weight = float(region_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if self.distribution is not None and self.distribution_weight:
            # Cross-entropy in float32 even under autocast: a float16 log-softmax loses small probabilities.
            parts["distribution"] = self.distribution(logits.float(), target)
            total = total + self.distribution_weight * parts["distribution"]
        if self.region is not None and self.region_weight:
            parts["region"] = self.region(logits, target)
            total = total + self.region_weight * parts["region"]
        return total, {k: v.detach() for k, v in parts.items()}


def build_loss(loss_cfg: DictConfig | Mapping[str, Any], num_classes: int) -> SegmentationLoss:
    """The loss from ``train.loss``: ``distribution`` and ``region`` are built from their ``_target_``.

    ``distribution.weight`` may be a list of class weights (turned into a tensor); a node set to
    null (or a weight of 0) disables that term.
    """
    if not isinstance(loss_cfg, DictConfig):
        loss_cfg = OmegaConf.create(dict(loss_cfg))
    distribution = _build_term(loss_cfg, "distribution", num_classes)
    region = _build_term(loss_cfg, "region", num_classes)
    return SegmentationLoss(
        distribution,
        region,
        distribution_weight=float(loss_cfg.get("distribution_weight", 1.0)),
        region_weight=float(loss_cfg.get("region_weight", 1.0)),
    )


def _build_term(loss_cfg: DictConfig, key: str, num_classes: int) -> nn.Module | None:
    spec = loss_cfg.get(key)
    if spec is None or not loss_cfg.get(f"{key}_weight", 1.0):
        return None
    if "_target_" not in spec:
        raise EffdetsegError(f"train.loss.{key}: needs a _target_ (e.g. torch.nn.CrossEntropyLoss)")
    kwargs: dict[str, Any] = {}
    class_weights = spec.get("weight")
    if class_weights is not None and not isinstance(class_weights, (int, float)):
        # Class weights: a list in YAML, a tensor for torch (a buffer, so .to(device) moves it).
        kwargs["weight"] = torch.tensor(list(class_weights), dtype=torch.float32)
        if len(kwargs["weight"]) != num_classes:
            raise EffdetsegError(
                f"train.loss.{key}.weight: {len(kwargs['weight'])} class weights for {num_classes} classes"
            )
    return instantiate(spec, f"train.loss.{key}", **kwargs)
