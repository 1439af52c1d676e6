"""The data layer's entry points: ``build_dataset(data_cfg, split)``, ``dataset_splits(data_cfg)``
and ``build_label_set(data_cfg)``.

``data_cfg`` is the ``data`` node of the composed config (one of the presets in
``effdetseg/configs/data``). Its ``format`` key (default: its ``name``) picks the reader.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ..errors import EffdetsegError
from ..io.labels import IGNORE_INDEX, LabelSet, voc_colormap
from .image_io import set_max_image_pixels
from .transforms import build_transform

# format -> "module:function" building the dataset; each is imported only when used.
FORMATS = {
    "synthetic": "effdetseg.data.synthetic:build_synthetic",
    "voc": "effdetseg.data.voc:build_voc",
    "voc_aug": "effdetseg.data.voc:build_voc_aug",
    "coco_voc": "effdetseg.data.coco:build_coco_voc",
    "camvid": "effdetseg.data.folder:build_camvid",
    "folder": "effdetseg.data.folder:build_folder",
}


def _as_config(data_cfg: Any) -> DictConfig:
    if isinstance(data_cfg, DictConfig):
        return data_cfg
    if isinstance(data_cfg, dict):
        return OmegaConf.create(data_cfg)
    raise TypeError(f"data_cfg must be a DictConfig or dict, got {type(data_cfg).__name__}")


def require(data_cfg: DictConfig, key: str) -> Any:
    """``data_cfg[key]``, or an error naming ``data.<key>`` when it is missing or null."""
    value = OmegaConf.select(data_cfg, key, default=None)
    if value is None:
        raise EffdetsegError(f"data.{key} is not set (data={data_cfg.get('name')})")
    return value


def data_format(data_cfg: DictConfig) -> str:
    fmt = data_cfg.get("format") or data_cfg.get("name")
    if fmt not in FORMATS:
        raise EffdetsegError(f"data.format: unknown dataset format {fmt!r}; choose from {sorted(FORMATS)}")
    return str(fmt)


def root_dir(data_cfg: DictConfig) -> Path:
    """``data.root`` as an existing directory, or an error that says how to set it."""
    root = data_cfg.get("root")
    if not root:
        raise EffdetsegError(f"data.root is not set: point data={data_cfg.get('name')} at its files with data.root=PATH")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise EffdetsegError(f"data.root: {path} is not a directory")
    return path


def num_classes_of(data_cfg: DictConfig) -> int:
    n = require(data_cfg, "num_classes")
    if not isinstance(n, int) or not 1 <= n <= 255:
        raise EffdetsegError(f"data.num_classes must be an integer in 1…255, got {n!r}")
    return n


def scan_workers(data_cfg: DictConfig) -> int:
    """DataLoader workers for a pass that only reads files (``data check``, ``data prepare``):
    ``data.num_workers``, where ``auto`` is one per core (at most 8): nothing else computes then."""
    value = data_cfg.get("num_workers", 0)
    if value == "auto":
        return min(8, os.cpu_count() or 1)
    return int(value or 0)


def dataset_splits(data_cfg: DictConfig | dict) -> tuple[str, ...]:
    """The splits a preset defines: ``train`` and ``val`` for synthetic scenes; otherwise every
    configured ``data.splits`` entry, and ``val`` held out of ``train`` by ``data.val_fraction``."""
    data_cfg = _as_config(data_cfg)
    if data_format(data_cfg) == "synthetic":
        return ("train", "val")
    splits = [name for name, split in (data_cfg.get("splits") or {}).items() if split is not None]
    if "val" not in splits and "train" in splits and data_cfg.get("val_fraction"):
        splits.insert(splits.index("train") + 1, "val")
    return tuple(splits)


def build_dataset(data_cfg: DictConfig | dict, split: str, *, augment: bool | None = None, normalize: bool = True) -> Dataset:
    """The ``split`` dataset of the configured preset (an ``AugmentedDataset``).

    ``augment`` (default: ``split == "train"``) picks ``data.augmentation.train`` over ``.val``;
    ``normalize=False`` leaves images uint8 for the inference path, which normalizes them itself.
    ``data.max_image_pixels`` (when set) becomes the process's image pixel limit, which the
    DataLoader workers inherit.
    """
    data_cfg = _as_config(data_cfg)
    set_max_image_pixels(data_cfg.get("max_image_pixels"))
    available = dataset_splits(data_cfg)
    if split not in available:
        raise EffdetsegError(f"split {split!r} is not defined for data={data_cfg.get('name')} (splits: {', '.join(available)})")
    ignore = data_cfg.get("ignore_index", IGNORE_INDEX)
    if ignore != IGNORE_INDEX:
        raise EffdetsegError(f"data.ignore_index must be {IGNORE_INDEX}; remap other ignore values with data.label_map")
    module_name, func_name = FORMATS[data_format(data_cfg)].split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    transform = build_transform(data_cfg, augment=split == "train" if augment is None else augment, normalize=normalize)
    return builder(data_cfg, split, transform)


def build_label_set(data_cfg: DictConfig | dict) -> LabelSet:
    """Names and colors of the classes: ``data.labels`` JSON if set, else the preset's own set."""
    data_cfg = _as_config(data_cfg)
    num_classes = num_classes_of(data_cfg)
    labels_path = data_cfg.get("labels")
    if labels_path:
        labels = LabelSet.from_json(labels_path)
    else:
        fmt = data_format(data_cfg)
        if fmt in ("voc", "voc_aug", "coco_voc"):
            labels = LabelSet.voc()
        elif fmt == "camvid":
            labels = LabelSet.camvid()
        elif fmt == "synthetic":
            names = ("background", *require(data_cfg, "shapes"))
            labels = LabelSet(tuple(names), tuple(voc_colormap(len(names))))
        else:
            labels = LabelSet.generic(num_classes)
    if labels.num_classes != num_classes:
        source = labels_path or f"the {data_cfg.get('name')} label set"
        raise EffdetsegError(f"{source}: has {labels.num_classes} classes but data.num_classes is {num_classes}")
    return labels

