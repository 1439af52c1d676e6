"""The training loss: distribution + region, each weighted.

The distribution term scores every pixel on its own: cross-entropy, OHEM cross-entropy (only the
hardest pixels) or focal loss (easy pixels down-weighted), each with optional class weights
(``train.loss.class_weights``: a list, or ``median_frequency`` computed from the training masks).
The region term (soft-IoU, soft-Dice or Lovász-softmax) scores each class's overlap as a whole,
so small objects and rare classes count as much as large ones. Ignored pixels (255) are left out
of both.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ..configs.targets import instantiate
from ..errors import EffdetsegError

REGION_LOSS_TYPES = ("iou", "dice", "lovasz")
CLASS_WEIGHT_MODES = ("median_frequency",)


def _pixel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per valid pixel: (cross-entropy, its class weight, the target's log-probability), flat.

    N×C×H×W logits and N×H×W targets in; ignored pixels dropped; float32 throughout.
    """
    log_probs = logits.float().log_softmax(dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    own = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)[valid]  # log p(true class)
    classes = safe_target[valid]
    pixel_weight = weight.to(own.dtype)[classes] if weight is not None else torch.ones_like(own)
    return -own, pixel_weight, own


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``Σ wᵢ vᵢ / Σ wᵢ`` as torch's weighted cross-entropy reduces; 0 with a gradient path when empty."""
    if values.numel() == 0:  # every pixel ignored: no loss, no gradient (not NaN)
        return logits.sum() * 0.0
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


class OhemCrossEntropyLoss(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining, as PSPNet/mmseg train).

    A pixel is hard when its probability of the true class is below ``threshold``; at least
    ``min_kept`` pixels (the hardest) are kept per batch, so the loss never falls to a handful of
    pixels once the easy majority is learned. With ``keep_fraction`` set, the hardest
    ``keep_fraction`` of the valid pixels are kept instead of a threshold (still at least
    ``min_kept``). Easy pixels of large classes (road, sky) stop drowning the thin ones.
    ``weight``: per-class weights, reduced as torch's weighted cross-entropy
    (``Σ w ce / Σ w`` over the kept pixels).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        threshold: float = 0.7,
        min_kept: int = 100_000,
        keep_fraction: float | None = None,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        key = "train.loss.distribution"
        if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
            raise EffdetsegError(f"{key}.threshold: expected a probability in (0, 1], got {threshold!r}")
        if keep_fraction is not None and not (isinstance(keep_fraction, (int, float)) and 0.0 < keep_fraction <= 1.0):
            raise EffdetsegError(f"{key}.keep_fraction: expected a fraction in (0, 1] or null, got {keep_fraction!r}")
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
            raise EffdetsegError(f"{key}.min_kept: expected a pixel count >= 0, got {min_kept!r}")
        self.ignore_index = ignore_index
        self.threshold = float(threshold)
        self.min_kept = int(min_kept)
        self.keep_fraction = None if keep_fraction is None else float(keep_fraction)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce, pixel_weight, own = _pixel_cross_entropy(logits, target, self.ignore_index, self.weight)
        count = ce.numel()
        if self.keep_fraction is not None:
            keep = max(math.ceil(self.keep_fraction * count), self.min_kept)
        else:
            hard = int((own.detach().exp() < self.threshold).sum())
            keep = max(hard, self.min_kept)
        if keep < count:
            # The hardest `keep` pixels: the threshold rule keeps exactly those below it (they are the
            # hardest), topped up to min_kept by the next hardest.
            index = ce.detach().topk(keep, sorted=False).indices
            ce, pixel_weight = ce[index], pixel_weight[index]
        return _weighted_mean(ce, pixel_weight, logits)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``−(1 − p)^γ log p`` per pixel, ``p`` the true class's probability.

    Well-classified pixels (p → 1) fade out smoothly, so the gradient goes to the uncertain ones —
    the thin and rare classes — without OHEM's hard cut. ``gamma=0`` is cross-entropy. ``weight``:
    per-class weights (the α of the paper, per class), reduced as ``Σ w·FL / Σ w``.
    """

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0.0):
            raise EffdetsegError(f"train.loss.distribution.gamma: expected a number >= 0, got {gamma!r}")
        self.ignore_index = ignore_index
        self.gamma = float(gamma)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce, pixel_weight, own = _pixel_cross_entropy(logits, target, self.ignore_index, self.weight)
        focal = (1.0 - own.exp()).clamp_min(0.0).pow(self.gamma) * ce
        return _weighted_mean(focal, pixel_weight, logits)


def median_frequency_weights(pixels_per_image: np.ndarray) -> np.ndarray:
    """Class weights by median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights).

    ``pixels_per_image``: (images, classes) labelled pixel counts. A class's frequency is its
    pixels over the labelled pixels of the images it appears in; its weight is the median of the
    frequencies over its own, so a class as common as the median gets 1, rarer ones more. A class
    with no pixel gets 1 (it never meets the loss).
    """
    counts = np.asarray(pixels_per_image, dtype=np.float64)
    class_pixels = counts.sum(0)
    image_pixels = (counts.sum(1, keepdims=True) * (counts > 0)).sum(0)
    present = class_pixels > 0
    weights = np.ones(counts.shape[1])
    if present.any():
        frequency = class_pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    return weights


class RegionLoss(nn.Module):
    """Soft-IoU (Jaccard), soft-Dice or Lovász-softmax loss over classes, from softmax probabilities.

    Intersections and unions are summed over the whole batch, then ``1 - score`` is averaged over
    the classes present in the batch's targets (a class absent from the batch has no region to
    overlap; cross-entropy already penalises predicting it). Pixels equal to ``ignore_index`` are
    excluded from both prediction and target. ``loss_type=lovasz`` is ``LovaszSoftmaxLoss`` (so a
    config switches the region term with one key); ``stride`` > 1 scores every stride-th pixel of
    each row and column.
    """

    def __init__(self, loss_type: str = "iou", ignore_index: int = 255, smooth: float = 1.0, stride: int = 1) -> None:
        super().__init__()
        if loss_type not in REGION_LOSS_TYPES:
            raise EffdetsegError(f"train.loss.region.loss_type: expected one of {REGION_LOSS_TYPES}, got {loss_type!r}")
        self.lovasz = LovaszSoftmaxLoss(ignore_index, stride) if loss_type == "lovasz" else None
        self.loss_type = loss_type
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.stride = int(stride)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.lovasz is not None:
            return self.lovasz(logits, target)
        if self.stride > 1:
            logits, target = logits[..., :: self.stride, :: self.stride], target[..., :: self.stride, :: self.stride]
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
        # Class-major (classes × pixels): each class's sort runs over contiguous memory, a third
        # faster than sorting the columns of pixels × classes.
        probs = logits.float().softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)
        target = target.reshape(-1)
        valid = target != self.ignore_index
        if not valid.any():  # every pixel ignored: no gradient
            return logits.sum() * 0.0
        probs, target = probs[:, valid], target[valid]
        present = (torch.bincount(target, minlength=num_classes) > 0).nonzero().squeeze(1)
        foreground = (target.unsqueeze(0) == present.unsqueeze(1)).to(probs.dtype)
        errors = (foreground - probs[present]).abs()
        errors, order = errors.sort(dim=1, descending=True)
        foreground = foreground.gather(1, order)
        # The Jaccard loss after the k largest errors of each class, and its increments (lovasz_grad).
        total = foreground.sum(1, keepdim=True)
        jaccard = 1.0 - (total - foreground.cumsum(1)) / (total + (1.0 - foreground).cumsum(1))
        increments = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        return (errors * increments).sum(1).mean()


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


def build_loss(
    loss_cfg: DictConfig | Mapping[str, Any],
    num_classes: int,
    pixels_per_image: Callable[[], np.ndarray] | None = None,
) -> SegmentationLoss:
    """The loss from ``train.loss``: ``distribution`` and ``region`` are built from their ``_target_``.

    ``distribution.weight`` may be a list of class weights (turned into a tensor); a node set to
    null (or a weight of 0) disables that term. ``class_weights`` (a list, or ``median_frequency``)
    gives the distribution term its class weights; ``pixels_per_image`` returns the training
    masks' (images, classes) pixel counts, called only for ``median_frequency``.
    """
    if not isinstance(loss_cfg, DictConfig):
        loss_cfg = OmegaConf.create(dict(loss_cfg))
    class_weights = resolve_class_weights(loss_cfg.get("class_weights"), num_classes, pixels_per_image)
    if class_weights is not None:
        spec = loss_cfg.get("distribution")
        if spec is None or not loss_cfg.get("distribution_weight", 1.0):
            raise EffdetsegError("train.loss.class_weights: weights the distribution term, which is disabled")
        if spec.get("weight") is not None:
            raise EffdetsegError("train.loss.class_weights: set it or train.loss.distribution.weight, not both")
        # A resolved copy: the caller's config (and the run's config.yaml) keeps the key as written.
        loss_cfg = OmegaConf.create(OmegaConf.to_container(loss_cfg, resolve=True))
        with open_dict(loss_cfg):
            loss_cfg.distribution.weight = class_weights
    distribution = _build_term(loss_cfg, "distribution", num_classes)
    region = _build_term(loss_cfg, "region", num_classes)
    return SegmentationLoss(
        distribution,
        region,
        distribution_weight=float(loss_cfg.get("distribution_weight", 1.0)),
        region_weight=float(loss_cfg.get("region_weight", 1.0)),
    )


def resolve_class_weights(
    value: Any, num_classes: int, pixels_per_image: Callable[[], np.ndarray] | None = None
) -> list[float] | None:
    """``train.loss.class_weights`` as a list of ``num_classes`` floats (None: unweighted)."""
    key = "train.loss.class_weights"
    if value is None:
        return None
    if isinstance(value, str):
        if value not in CLASS_WEIGHT_MODES:
            raise EffdetsegError(f"{key}: expected null, a list of {num_classes} weights or one of {CLASS_WEIGHT_MODES}, got {value!r}")
        if pixels_per_image is None:
            raise EffdetsegError(f"{key}={value} needs the training masks (build_loss got no pixels_per_image)")
        counts = np.asarray(pixels_per_image())
        if counts.ndim != 2 or counts.shape[1] != num_classes:
            raise ValueError(f"pixels_per_image: expected (images, {num_classes}) counts, got shape {counts.shape}")
        return [float(w) for w in median_frequency_weights(counts)]
    try:
        weights = [float(w) for w in value]
    except (TypeError, ValueError):
        raise EffdetsegError(f"{key}: expected null, a list of {num_classes} weights or one of {CLASS_WEIGHT_MODES}, got {value!r}") from None
    if len(weights) != num_classes:
        raise EffdetsegError(f"{key}: {len(weights)} class weights for {num_classes} classes")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise EffdetsegError(f"{key}: weights must be finite, >= 0 and not all 0, got {weights}")
    return weights


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
