"""Decoded images and masks kept in memory (``data.cache=ram``, as ultralytics' ``cache=ram``).

Every sample is decoded and checked once, up front, straight into two flat uint8 arrays (images,
masks) allocated from the image headers, so the peak is the arrays plus one decoded sample per
decoding thread; augmentation still runs afresh on every item, so each epoch sees new crops and
flips. The arrays are plain process memory: DataLoader workers started by ``fork`` (Linux's
default) share them copy-on-write; under ``spawn`` every worker receives its own copy. Items are
read-only views, so a transform that tried to write into its input would fail instead of changing
the cache.

A ``DecodedStore`` is keyed by image file, so the training plan's fingerprint (which needs every
mask decoded) and the cache share one decode: the plan decodes into a store, the trainer's
``CachedDataset`` reads from it.

Before decoding, the size is compared with the memory this process may use — the smaller of the
system's available memory and a container's cgroup limit less its usage — so a cache that does not
fit is one error line instead of a swapping or killed run.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import EffdetsegError
from .datasets import AugmentedDataset
from .image_io import open_image

CACHE_MODES = ("none", "ram")
# Keep this much of the available memory for the model, activations and the rest of the run.
MEMORY_HEADROOM = 0.75
CGROUP_ROOT = Path("/sys/fs/cgroup")

Loader = Callable[[int], tuple[np.ndarray, np.ndarray]]


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory_left(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this container may still allocate under its cgroup memory limit (v2 ``memory.max`` −
    ``memory.current``, or v1 ``memory.limit_in_bytes`` − ``memory.usage_in_bytes``), None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(root / limit_file)
        if limit is None or limit >= 2**60:  # "max", or v1's "unlimited" (a page-rounded 2^63)
            continue
        usage = _read_int(root / usage_file) or 0
        return max(0, limit - usage)
    return None


def available_memory() -> int | None:
    """Bytes this process can use without swapping or being killed: the system's ``MemAvailable``,
    bounded by the cgroup limit when there is one; None when unknown."""
    system = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    system = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if system is None:
        try:
            system = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            system = None
    cgroup = cgroup_memory_left()
    known = [v for v in (system, cgroup) if v is not None]
    return min(known) if known else None


def image_headers(paths: Sequence[Path]) -> list[tuple[int, int, str]]:
    """(height, width, PIL mode) of each image, from its header (nothing is decoded; the pixel
    limit applies, naming its setting)."""
    headers = []
    for path in paths:
        try:
            with open_image(path, str(path)) as image:
                width, height = image.size
                headers.append((height, width, image.mode))
        except EffdetsegError:
            raise
        except Exception as e:
            raise EffdetsegError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return headers


def header_pixels(paths: Sequence[Path]) -> list[int]:
    """Width × height of each image, from its header."""
    return [height * width for height, width, _ in image_headers(paths)]


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


class DecodedStore:
    """Images (H×W×3) and masks (H×W) of samples, keyed, in two flat uint8 arrays.

    ``pixels[i]`` (from the headers) sizes the arrays before anything is decoded; each decoded
    pair is copied into its slot and dropped, so the peak is the arrays plus ``threads`` pairs.
    """

    def __init__(self, keys: Sequence[Hashable], pixels: Sequence[int], load: Loader, threads: int = 2) -> None:
        self.keys = list(keys)
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(pixels, dtype=np.int64))]).astype(np.int64)
        self.shapes: list[tuple[int, int]] = [(0, 0)] * len(self.keys)
        self.images = np.empty(int(self.offsets[-1]) * 3, dtype=np.uint8)
        self.masks = np.empty(int(self.offsets[-1]), dtype=np.uint8)
        self.slot = {key: i for i, key in enumerate(self.keys)}

        def fill(i: int) -> None:
            image, mask = load(i)
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            if image.shape[0] * image.shape[1] != end - start:  # a header that lied (or a file replaced meanwhile)
                raise EffdetsegError(f"{self.keys[i]}: decoded size {image.shape[1]}×{image.shape[0]} differs from its header")
            self.images[3 * start : 3 * end] = image.reshape(-1)
            self.masks[start:end] = mask.reshape(-1)
            self.shapes[i] = (int(image.shape[0]), int(image.shape[1]))  # EXIF rotation may swap the sides

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # decoders release the GIL
            list(pool.map(fill, range(len(self.keys))))
        self.images.flags.writeable = False
        self.masks.flags.writeable = False

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self.slot

    def get(self, key: Hashable) -> tuple[np.ndarray, np.ndarray]:
        i = self.slot[key]
        height, width = self.shapes[i]
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.images[3 * start : 3 * end].reshape(height, width, 3), self.masks[start:end].reshape(height, width)

    def mask_views(self) -> list[np.ndarray]:
        return [self.get(key)[1] for key in self.keys]


def sample_keys(dataset: AugmentedDataset) -> list[Hashable]:
    """What identifies each sample across datasets: its image file, or (for generated data) its index."""
    samples = getattr(dataset, "samples", None)
    if samples and all(hasattr(s, "image") for s in samples):
        return [str(s.image) for s in samples]
    return list(range(len(dataset)))


def estimated_bytes(dataset: AugmentedDataset) -> int:
    """Decoded size of ``dataset`` (RGB image + mask = 4 bytes a pixel), from image headers when the
    samples are files, else from its first sample."""
    samples = getattr(dataset, "samples", None)
    if samples and all(hasattr(s, "image") for s in samples):
        return 4 * sum(header_pixels([s.image for s in samples]))
    if len(dataset) == 0:
        return 0
    image, mask = dataset.load(0)
    return (image.nbytes + mask.nbytes) * len(dataset)


def decode_dataset(dataset: AugmentedDataset, threads: int = 2) -> DecodedStore:
    """Every sample of ``dataset`` decoded (and checked) into a new store."""
    samples = getattr(dataset, "samples", None)
    if samples and all(hasattr(s, "image") for s in samples):
        pixels = header_pixels([s.image for s in samples])
    elif len(dataset):
        image, _ = dataset.load(0)  # generated data: every sample has the first one's size
        pixels = [image.shape[0] * image.shape[1]] * len(dataset)
    else:
        pixels = []
    return DecodedStore(sample_keys(dataset), pixels, dataset.load, threads)


class CachedDataset(AugmentedDataset):
    """``dataset`` with every ``load(i)`` answered from memory; ids and transform are the dataset's own.

    ``store``: decoded samples to read from (the plan's); those it lacks are decoded here.
    """

    def __init__(self, dataset: AugmentedDataset, threads: int = 2, store: DecodedStore | None = None) -> None:
        self.dataset = dataset
        self.transform = dataset.transform
        keys = sample_keys(dataset)
        if store is None or not all(key in store for key in keys):
            store = decode_dataset(dataset, threads)
        self.store = store
        self.keys = keys

    @property
    def nbytes(self) -> int:
        return sum(self.store.get(key)[0].nbytes + self.store.get(key)[1].nbytes for key in self.keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.get(self.keys[index])

    def sample_id(self, index: int) -> str:
        return self.dataset.sample_id(index)


def cache_datasets(
    datasets: dict[str, AugmentedDataset], copies: int = 1, threads: int = 2, store: DecodedStore | None = None
) -> dict[str, AugmentedDataset]:
    """``datasets`` (split → dataset) decoded into memory, after checking that all of them fit
    ``copies`` times (one per training process on this machine). With ``store`` (decoded already),
    nothing is decoded or checked again."""
    covered = store is not None and all(key in store for d in datasets.values() for key in sample_keys(d))
    if not covered:
        store = None
        needed = sum(estimated_bytes(d) for d in datasets.values())
        check_fits(needed, copies, " and ".join(f"{len(d)} {split}" for split, d in datasets.items()) + " samples")
    return {split: CachedDataset(d, threads, store) for split, d in datasets.items()}
