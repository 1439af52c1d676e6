"""Datasets, augmentation, label sets and image reading.

The contract other packages use: ``build_dataset(data_cfg, split)`` (an ``AugmentedDataset``),
``dataset_splits(data_cfg)``, ``collate_pad(items)`` / ``collate_list(items)`` and
``build_label_set(data_cfg)``, with ``data_cfg`` a preset from the config group ``data``.
"""
from .build import build_dataset, build_label_set, dataset_splits
from .datasets import AugmentedDataset, collate_list, collate_pad
from .image_io import IMAGE_EXTENSIONS, read_image, read_mask
from ..io.labels import IGNORE_INDEX, LabelSet

__all__ = [
    "AugmentedDataset",
    "build_dataset",
    "build_label_set",
    "dataset_splits",
    "collate_list",
    "collate_pad",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_mask",
    "IGNORE_INDEX",
    "LabelSet",
]
