"""Albumentations pipelines declared in the data config.

``data.augmentation.train`` and ``data.augmentation.val`` are lists of transforms, each a mapping
with a ``_target_`` (``albumentations.HorizontalFlip``, …) and its arguments, built by the config
layer's ``instantiate`` (only allowed targets: see :mod:`effdetseg.configs.targets`). Normalization is not part of those lists: it comes from ``data.normalize`` and is
always the last step, so every pipeline yields the same input statistics the model expects.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..configs.targets import instantiate
from ..errors import EffdetsegError


class SegmentationTransform:
    """Callable (image uint8 H×W×3, mask uint8 H×W) -> (float32 3×H×W tensor, int64 H×W tensor);
    the image stays uint8 when the pipeline does not normalize (the inference path does that)."""

    def __init__(self, pipeline: A.Compose, mask_size: tuple[int, int] | None = None) -> None:
        self.pipeline = pipeline
        self.mask_size = mask_size  # training only: the original's resize_mask_height × resize_mask_width

    def set_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image, mask=mask)
        image_out, mask_out = out["image"], out["mask"]
        if self.mask_size is not None and mask_out.shape[:2] != self.mask_size:
            mask_out = cv2.resize(mask_out, self.mask_size[::-1], interpolation=cv2.INTER_NEAREST)
        image_t = torch.from_numpy(_writable(np.ascontiguousarray(image_out.transpose(2, 0, 1))))
        mask_t = torch.from_numpy(_writable(np.ascontiguousarray(mask_out))).long()
        return image_t, mask_t

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline!r}, mask_size={self.mask_size})"


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied when it is a read-only view (of the decoded-data cache: a pipeline that
    changes nothing hands its input through), since torch tensors must be writable."""
    return array if array.flags.writeable else array.copy()


def _build_one(spec: Any, key: str) -> A.BasicTransform:
    if not isinstance(spec, (Mapping, DictConfig)) or "_target_" not in spec:
        raise EffdetsegError(f"{key}: expected a mapping with _target_ (e.g. albumentations.HorizontalFlip), got {spec!r}")
    target = str(spec["_target_"])
    if target.rsplit(".", 1)[-1] in ("Normalize", "ToTensorV2"):
        raise EffdetsegError(f"{key}: remove {target}; normalization comes from data.normalize and is added last")
    transform = instantiate(spec, key)
    if not isinstance(transform, A.BasicTransform | A.BaseCompose):
        raise EffdetsegError(f"{key}: {target} is not an albumentations transform")
    return transform


def build_pipeline(specs: Sequence[Any] | None, mean: Sequence[float] | None, std: Sequence[float] | None, key: str) -> A.Compose:
    """The transforms in ``specs`` followed by Normalize(mean, std) (none when mean is None);
    ``key`` names the list in errors."""
    if specs is None:
        specs = []
    if not isinstance(specs, (list, tuple, ListConfig)):
        raise EffdetsegError(f"{key}: expected a list of transforms, got {type(specs).__name__}")
    transforms = [_build_one(spec, f"{key}[{i}]") for i, spec in enumerate(specs)]
    if mean is not None and std is not None:
        transforms.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(transforms)


def build_transform(data_cfg: DictConfig, augment: bool, normalize: bool = True) -> SegmentationTransform:
    """The configured pipeline: ``data.augmentation.train`` when ``augment``, else ``.val``; then
    normalization with ``data.normalize`` unless ``normalize=False`` (uint8 images out)."""
    split = "train" if augment else "val"
    stats = data_cfg.get("normalize")
    if stats is None or "mean" not in stats or "std" not in stats:
        raise EffdetsegError("data.normalize: expected {mean: [r, g, b], std: [r, g, b]}")
    mean, std = list(stats.mean), list(stats.std)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise EffdetsegError(f"data.normalize: mean and std need 3 values each, std > 0; got mean={mean} std={std}")
    augmentation = data_cfg.get("augmentation") or {}
    specs = augmentation.get(split) if isinstance(augmentation, (Mapping, DictConfig)) else None
    pipeline = build_pipeline(specs, mean if normalize else None, std if normalize else None, key=f"data.augmentation.{split}")

    # The original's resize_mask_* keys: only when they differ from the image size does the
    # training mask get its own nearest-neighbour resize (by default they are equal: a no-op).
    mask_size = None
    prep = data_cfg.get("preprocessing") or {}
    image_size = (prep.get("resize_height"), prep.get("resize_width"))
    wanted = (prep.get("resize_mask_height"), prep.get("resize_mask_width"))
    if augment and all(wanted) and wanted != image_size:
        mask_size = (int(wanted[0]), int(wanted[1]))
    return SegmentationTransform(pipeline, mask_size)


def to_container(cfg: Any) -> Any:
    """Plain Python values from an OmegaConf node (resolved), anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
