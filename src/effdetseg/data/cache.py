"""Decoded images and masks kept in memory (``data.cache=ram``, as ultralytics' ``cache=ram``).

Every sample is decoded and checked once, up front, into two flat uint8 arrays (images, masks);
augmentation still runs afresh on every item, so each epoch sees new crops and flips. The arrays
are plain process memory: DataLoader workers started by ``fork`` (Linux's default) share them
copy-on-write; under ``spawn`` every worker receives its own copy. Items are read-only views, so a
transform that tried to write into its input would fail instead of changing the cache.

Before decoding, the size is estimated (image headers for files; the first sample otherwise) and
compared with the memory the system says is available, so a cache that does not fit is one error
line instead of a swapping or killed run.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import EffdetsegError
from .datasets import AugmentedDataset

CACHE_MODES = ("none", "ram")
# Keep this much of the available memory for the model, activations and the rest of the run.
MEMORY_HEADROOM = 0.75


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimated_bytes(dataset: AugmentedDataset) -> int:
    """Decoded size of ``dataset`` (RGB image + mask = 4 bytes a pixel), from image headers when the
    samples are files, else from its first sample."""
    samples = getattr(dataset, "samples", None)
    if samples and all(hasattr(s, "image") for s in samples):
        from PIL import Image

        total = 0
        for sample in samples:
            try:
                with Image.open(sample.image) as image:  # reads the header only
                    width, height = image.size
            except Exception as e:  # the decode below names the file properly
                raise EffdetsegError(f"{sample.image}: unreadable image ({type(e).__name__}: {e})") from None
            total += 4 * width * height
        return total
    if len(dataset) == 0:
        return 0
    image, mask = dataset.load(0)
    return (image.nbytes + mask.nbytes) * len(dataset)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(needed: int, copies: int, what: str) -> None:
    """One error line when ``copies`` × ``needed`` bytes would not fit in the available memory."""
    available = available_memory()
    if available is None:
        return
    total = needed * copies
    if total > MEMORY_HEADROOM * available:
        times = f" × {copies} processes" if copies > 1 else ""
        raise EffdetsegError(
            f"data.cache=ram: {what} need {_gib(needed)} decoded{times}, but only {_gib(available)} of memory is "
            f"available (the cache may use {int(100 * MEMORY_HEADROOM)} % of it); use data.cache=none"
        )


class CachedDataset(AugmentedDataset):
    """``dataset`` with every ``load(i)`` answered from memory; ids and transform are the dataset's own."""

    def __init__(self, dataset: AugmentedDataset, threads: int = 2) -> None:
        self.dataset = dataset
        self.transform = dataset.transform
        count = len(dataset)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # decoders release the GIL
            pairs = list(pool.map(dataset.load, range(count)))
        self.shapes = [image.shape[:2] for image, _ in pairs]
        pixels = np.array([h * w for h, w in self.shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(pixels)])
        self.images = np.empty(int(self.offsets[-1]) * 3, dtype=np.uint8)
        self.masks = np.empty(int(self.offsets[-1]), dtype=np.uint8)
        for i, (image, mask) in enumerate(pairs):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            self.images[3 * start : 3 * end] = image.reshape(-1)
            self.masks[start:end] = mask.reshape(-1)
        self.images.flags.writeable = False
        self.masks.flags.writeable = False

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.shapes[index]
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.images[3 * start : 3 * end].reshape(height, width, 3), self.masks[start:end].reshape(height, width)

    def sample_id(self, index: int) -> str:
        return self.dataset.sample_id(index)


def cache_datasets(datasets: dict[str, AugmentedDataset], copies: int = 1, threads: int = 2) -> dict[str, AugmentedDataset]:
    """``datasets`` (split → dataset) decoded into memory, after checking that all of them fit
    ``copies`` times (one per training process on this machine)."""
    needed = sum(estimated_bytes(d) for d in datasets.values())
    check_fits(needed, copies, " and ".join(f"{len(d)} {split}" for split, d in datasets.items()) + " samples")
    return {split: CachedDataset(d, threads) for split, d in datasets.items()}

