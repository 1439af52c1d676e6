"""Datasets, augmentation, label sets and image reading."""
from .image_io import IMAGE_EXTENSIONS, read_image, read_mask
from .labels import IGNORE_INDEX, LabelSet

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_mask", "IGNORE_INDEX", "LabelSet"]
