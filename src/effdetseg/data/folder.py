"""CamVid (SegNet layout) and custom folders of images + masks matched by file stem."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ..errors import EffdetsegError
from .build import build_label_set, num_classes_of, root_dir
from .datasets import Sample, SegmentationFiles
from .files import find_pairs, raise_problems, split_by_fraction, split_config
from .image_io import read_image, read_mask
from ..io.labels import IGNORE_INDEX, LabelSet
from .transforms import SegmentationTransform, to_container


def read_color_mask(path: Path, labels: LabelSet) -> np.ndarray:
    """An RGB color mask turned into label ids by the label set's colors (its ignore color → 255)."""
    rgb = read_image(path).astype(np.int32)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(labels.colors)}
    r, g, b = labels.ignore_color
    palette.setdefault((r << 16) | (g << 8) | b, IGNORE_INDEX)
    colors, inverse = np.unique(keys, return_inverse=True)
    unknown = [c for c in colors.tolist() if c not in palette]
    if unknown:
        shown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:5]]
        raise EffdetsegError(f"{path}: colors {shown}{' …' if len(unknown) > 5 else ''} are not in the labels file")
    ids = np.array([palette[c] for c in colors.tolist()], dtype=np.uint8)
    return ids[inverse].reshape(keys.shape)


def read_binary_mask(path: Path) -> np.ndarray:
    """A foreground/background mask: 0 is class 0, every other value (1 or 255, or an anti-aliased
    edge in between) class 1. No value is ignored."""
    return (read_mask(path) > 0).astype(np.uint8)


def mask_reader_for(data_cfg: DictConfig):
    """Label-id PNGs (``mask_format: ids``), 0/255 or 0/1 foreground masks (``binary``: classes 0/1),
    or RGB color PNGs mapped through the labels JSON (``color``)."""
    mask_format = data_cfg.get("mask_format", "ids")
    if mask_format == "ids":
        return read_mask
    if mask_format == "binary":
        if int(data_cfg.get("num_classes") or 0) != 2:
            raise EffdetsegError(f"data.mask_format=binary gives 2 classes (background, foreground); set data.num_classes=2, not {data_cfg.get('num_classes')}")
        return read_binary_mask
    if mask_format == "color":
        if not data_cfg.get("labels"):
            raise EffdetsegError("data.labels: color masks (data.mask_format=color) need a labels JSON with the colors")
        return partial(read_color_mask, labels=build_label_set(data_cfg))
    raise EffdetsegError(f"data.mask_format must be 'ids', 'binary' or 'color', got {mask_format!r}")


def folder_samples(data_cfg: DictConfig, split: str) -> tuple[list[Sample], list[str]]:
    """Samples and problems of one split; without ``splits.val`` the train folder is split by ratio."""
    root = root_dir(data_cfg)
    splits = data_cfg.get("splits") or {}
    if split == "val" and splits.get("val") is None and data_cfg.get("val_fraction"):
        samples, problems = find_pairs(root, split_config(data_cfg, "train"), "data.splits.train")
        return split_by_fraction(samples, float(data_cfg.val_fraction), int(data_cfg.get("split_seed", 0)))["val"], problems
    samples, problems = find_pairs(root, split_config(data_cfg, split), f"data.splits.{split}")
    if split == "train" and splits.get("val") is None and data_cfg.get("val_fraction"):
        samples = split_by_fraction(samples, float(data_cfg.val_fraction), int(data_cfg.get("split_seed", 0)))["train"]
    return samples, problems


def open_split(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> tuple[SegmentationFiles, list[str]]:
    """The dataset of the pairs found, and the problems (missing files) met on the way."""
    samples, problems = folder_samples(data_cfg, split)
    dataset = SegmentationFiles(
        samples,
        transform,
        num_classes_of(data_cfg),
        mask_reader=mask_reader_for(data_cfg),
        label_map=to_container(data_cfg.get("label_map")),
    )
    return dataset, problems


def build_folder(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> Dataset:
    dataset, problems = open_split(data_cfg, split, transform)
    raise_problems(problems, f"data={data_cfg.get('name')} split {split}")
    return dataset


build_camvid = build_folder  # the SegNet layout is a folder preset with its own defaults
