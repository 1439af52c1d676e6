"""Datasets, augmentation, label sets and image reading.

The contract other packages use: ``build_dataset(data_cfg, split)``, ``collate_pad(items)`` and
``build_label_set(data_cfg)``, with ``data_cfg`` a preset from the Hydra group ``data``.
"""
from .build import build_dataset, build_label_set
from .datasets import collate_pad
from .image_io import IMAGE_EXTENSIONS, read_image, read_mask
from ..io.labels import IGNORE_INDEX, LabelSet

__all__ = [
    "build_dataset",
    "build_label_set",
    "collate_pad",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_mask",
    "IGNORE_INDEX",
    "LabelSet",
]
