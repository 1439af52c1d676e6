"""The dataset protocol, image/mask files as a dataset, and collation of batches of mixed sizes.

Every dataset of the data layer is an ``AugmentedDataset``: ``load(i)`` gives the untransformed
(image, mask) pair, items are ``{"image": float32 3×H×W (normalized; uint8 when built with
normalize=False), "mask": int64 H×W (255 = ignore), "id": str}``; the training loader asks for
items by ``(index, augmentation seed)``. Images are decoded per item (``data.cache=ram`` keeps them
decoded: :mod:`.cache`) and masks stay uint8 through augmentation.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import EffdetsegError
from .image_io import read_image, read_mask
from ..io.labels import IGNORE_INDEX
from .transforms import SegmentationTransform

MaskReader = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path


def label_lookup(label_map: Mapping[int, int] | None) -> np.ndarray | None:
    """A 256-entry table that remaps raw mask values (e.g. CamVid's 11 → 255), or None for identity."""
    if not label_map:
        return None
    table = np.arange(256, dtype=np.uint8)
    for raw, new in label_map.items():
        raw, new = int(raw), int(new)
        if not (0 <= raw <= 255 and 0 <= new <= 255):
            raise EffdetsegError(f"data.label_map: {raw} -> {new} is outside 0…255")
        table[raw] = new
    return table


def invalid_labels(mask: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Mask values that are neither a class id nor the ignore label (empty when the mask is fine)."""
    if int(mask.max(initial=0)) < num_classes:  # the common case, without a histogram
        return []
    counts = np.bincount(mask.ravel(), minlength=256)
    return [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != ignore_index]


def load_pair(
    sample: Sample,
    num_classes: int,
    mask_reader: MaskReader = read_mask,
    lookup: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint8 H×W×3) and checked mask (uint8 H×W) of one sample; problems raise naming the file."""
    image = read_image(sample.image)
    mask = mask_reader(sample.mask)
    if lookup is not None:
        mask = lookup[mask]
    if image.shape[:2] != mask.shape:
        raise EffdetsegError(
            f"{sample.mask}: mask is {mask.shape[1]}×{mask.shape[0]} but image {sample.image.name} is "
            f"{image.shape[1]}×{image.shape[0]} (width×height)"
        )
    bad = invalid_labels(mask, num_classes)
    if bad:
        raise EffdetsegError(
            f"{sample.mask}: label values {bad} are neither a class id (0…{num_classes - 1}) nor the ignore label {IGNORE_INDEX}"
        )
    return image, mask


class AugmentedDataset(Dataset):
    """Items are ``transform(*load(i))`` with their id; subclasses implement ``load`` and ``sample_id``.

    Albumentations pipelines keep their own random generators, which neither torch nor NumPy
    seeds reach, and every DataLoader worker starts with a copy of the same state. The training
    loader therefore asks for ``dataset[(index, seed)]``: the pipeline is seeded for that one item
    (the seed is drawn from run seed, epoch and index), so a sample's augmentation is the same
    whichever worker or process loads it, and an epoch replays exactly on resume. ``dataset[index]``
    continues the pipeline's current generator.
    """

    transform: SegmentationTransform

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed (image uint8 H×W×3, mask uint8 H×W) pair, for checks and statistics."""
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            index, seed = key
            self.transform.set_seed(seed)
        else:
            index = key
        image, mask = self.load(index)
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "id": self.sample_id(index)}


class SegmentationFiles(AugmentedDataset):
    """Image/mask file pairs, decoded, checked and transformed per item."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: SegmentationTransform,
        num_classes: int,
        mask_reader: MaskReader = read_mask,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.num_classes = num_classes
        self.mask_reader = mask_reader
        self.lookup = label_lookup(label_map)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return load_pair(self.samples[index], self.num_classes, self.mask_reader, self.lookup)

    def sample_id(self, index: int) -> str:
        return self.samples[index].id


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker it lives in shared memory from the start,
    as torch's default_collate does, so handing the batch to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def collate_pad(items: Sequence[dict]) -> dict:
    """Batch items of different sizes: images padded with 0, masks with 255, at the bottom/right.

    Returns ``{"image": B×3×Hmax×Wmax, "mask": B×Hmax×Wmax int64, "id": [str], "size": B×2 int64 (H, W)}``.
    """
    if not items:
        raise ValueError("collate_pad needs at least one item")
    sizes = torch.tensor([tuple(item["image"].shape[-2:]) for item in items], dtype=torch.int64)
    height, width = (int(v) for v in sizes.max(0).values)
    batch = len(items)
    images = _batch_buffer((batch, items[0]["image"].shape[0], height, width), items[0]["image"].dtype).zero_()
    masks = _batch_buffer((batch, height, width), torch.int64).fill_(IGNORE_INDEX)
    for i, item in enumerate(items):
        h, w = item["image"].shape[-2:]
        if tuple(item["mask"].shape) != (h, w):
            raise ValueError(f"item {item.get('id')}: mask {tuple(item['mask'].shape)} does not match image {(h, w)}")
        images[i, :, :h, :w] = item["image"]
        masks[i, :h, :w] = item["mask"]
    return {"image": images, "mask": masks, "id": [str(item["id"]) for item in items], "size": sizes}


def collate_list(items: Sequence[dict]) -> dict:
    """Batch items of different sizes without padding: ``{"image": [3×H×W], "mask": [H×W], "id": [str]}``
    (for the inference path, which batches images of equal network-input size itself)."""
    return {key: [item[key] for item in items] for key in ("image", "mask", "id")}
