"""The fingerprint of a folder of images and masks: what the training plan is derived from.

``take_fingerprint(data_cfg)`` reads what the files state and measures what the plan needs:

- from the folder: ``labels.json`` beside ``images/`` (class names and colours), the mask format
  (label ids, 0/255 foreground masks, RGB colour masks: read from a few masks' modes and values);
- from the image headers (nothing decoded): image count per split, sizes (median, extremes, spread),
  pixel modes (colour, greyscale, 16-bit, with alpha), decoded bytes;
- from every training mask: each class's share of the labelled pixels and of the images it
  appears in, the ignored share, and the class count when no labels file says it.

When the decoded data fits in memory (``fits_in_memory``), images and masks are decoded once into
a ``DecodedStore`` (the RAM cache the trainer then reads, see :mod:`.cache`) and the statistics
come from it; otherwise only the masks are decoded.
"""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from omegaconf import DictConfig, open_dict

from ..errors import EffdetsegError
from ..io.labels import IGNORE_INDEX, LabelSet
from .build import root_dir
from .cache import MEMORY_HEADROOM, DecodedStore, available_memory, image_headers
from .datasets import Sample, SegmentationFiles
from .folder import folder_samples, mask_reader_for
from .files import MASK_EXTENSIONS, raise_problems
from .image_io import open_image
from .transforms import SegmentationTransform, to_container

FINGERPRINT_FORMATS = ("folder", "camvid")
LABELS_FILE = "labels.json"
GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
MASKS_SAMPLED_FOR_FORMAT = 24


@dataclass(frozen=True)
class Fingerprint:
    """What the data says, in numbers (sizes are (height, width); shares are 0 … 1)."""

    train_images: int
    val_images: int
    median_size: tuple[int, int]
    min_side: int
    max_side: int
    size_spread: float  # 90th / 10th percentile of √(height × width): 1 when every image has one size
    modes: dict[str, int]  # PIL pixel modes of the images: RGB, L (greyscale), I;16, RGBA, …
    greyscale: float  # share of greyscale images
    mask_format: str
    num_classes: int
    class_names: tuple[str, ...]
    class_pixels: tuple[float, ...]  # share of the labelled training pixels
    class_images: tuple[float, ...]  # share of the training images holding the class
    ignored: float  # share of training pixels at the ignore label
    decoded_bytes: int  # train + val, RGB + mask
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_pixels"] = [round(v, 5) for v in self.class_pixels]
        data["class_images"] = [round(v, 4) for v in self.class_images]
        data["size_spread"] = round(self.size_spread, 3)
        data["seconds"] = round(self.seconds, 2)
        return data

    def summary(self) -> list[str]:
        """A few lines for the plan's printout."""
        h, w = self.median_size
        modes = ", ".join(f"{n} {m}" for m, n in sorted(self.modes.items(), key=lambda kv: -kv[1]))
        rare = [f"{n} {100 * p:.2g} % of pixels in {100 * i:.0f} % of images"
                for n, p, i in zip(self.class_names, self.class_pixels, self.class_images) if p < 0.05]
        lines = [
            f"{self.train_images} train + {self.val_images} val images, median {w}×{h} (sides {self.min_side}–{self.max_side}, "
            f"spread ×{self.size_spread:.2f}), {modes}; {self.decoded_bytes / 2**20:.0f} MiB decoded",
            f"{self.num_classes} classes ({self.mask_format} masks), {100 * self.ignored:.1f} % of pixels ignored"
            + (f"; rare: {'; '.join(rare)}" if rare else ""),
        ]
        return lines


def find_labels_file(data_cfg: DictConfig) -> Path | None:
    """``labels.json`` in ``data.root`` when the config names no labels file."""
    if data_cfg.get("labels"):
        return Path(str(data_cfg.labels)).expanduser()
    candidate = root_dir(data_cfg) / LABELS_FILE
    return candidate if candidate.is_file() else None


def detect_mask_format(masks: list[Path], labels: LabelSet | None) -> tuple[str, str | None]:
    """(``ids`` | ``binary`` | ``color``, a note when the choice is a guess) from a few masks."""
    modes: Counter[str] = Counter()
    values: set[int] = set()
    for path in masks:
        with open_image(path, str(path)) as im:
            modes[im.mode] += 1
            if im.mode in ("RGB", "RGBA"):
                continue
            if im.mode in ("L", "P", "1"):
                values.update(np.unique(np.asarray(im)).tolist())
    if modes and all(m in ("RGB", "RGBA") for m in modes):
        if labels is None:
            raise EffdetsegError(
                f"{masks[0]}: the masks are RGB colour images; put a {LABELS_FILE} with the class colours in data.root "
                f'({{"0": {{"class": "background", "color": [0, 0, 0]}}, …}}) or set data.labels=FILE'
            )
        return "color", None
    if values and values <= {0, 255} and 255 in values:
        if labels is not None and labels.num_classes == 2:
            return "binary", None
        if labels is None:
            return "binary", ("masks hold only the values 0 and 255: read as background / foreground "
                              "(data.mask_format=binary); set data.mask_format=ids if 255 means 'ignore'")
    return "ids", None


def _binary_with_more_values(data_cfg: DictConfig) -> list[str]:
    """One note when masks read as binary hold more than two values (all nonzero ones become class 1)."""
    samples, _ = folder_samples(data_cfg, "train")
    step = max(1, len(samples) // MASKS_SAMPLED_FOR_FORMAT)
    values: set[int] = set()
    example = None
    for sample in samples[::step]:
        with open_image(sample.mask, str(sample.mask)) as im:
            if im.mode not in ("L", "P", "1"):
                continue
            found = set(np.unique(np.asarray(im)).tolist())
        if len(found) > 2 and example is None:
            example = sample.mask
        values |= found
    if len(values) <= 2:
        return []
    return [f"data.mask_format=binary: the masks hold {len(values)} values (e.g. {example}); every nonzero one is read as "
            f"class 1 — set data.mask_format=ids if they are classes"]


def read_data_statements(data_cfg: DictConfig, user_keys: set[str]) -> list[str]:
    """Set in ``data_cfg`` what the folder states (labels file, mask format) and the user did not
    set; the notes (one line each) for what was guessed."""
    notes: list[str] = []
    labels_path = find_labels_file(data_cfg)
    labels = LabelSet.from_json(labels_path) if labels_path is not None else None
    with open_dict(data_cfg):
        if labels_path is not None and "data.labels" not in user_keys:
            data_cfg.labels = str(labels_path)
        if "data.mask_format" not in user_keys and data_cfg.get("format") == "folder":
            samples, _ = folder_samples(data_cfg, "train")
            step = max(1, len(samples) // MASKS_SAMPLED_FOR_FORMAT)
            mask_format, note = detect_mask_format([s.mask for s in samples[::step]], labels)
            data_cfg.mask_format = mask_format
            if note:
                notes.append(note)
            if mask_format == "binary" and "data.num_classes" not in user_keys:
                data_cfg.num_classes = 2
        if str(getattr(data_cfg.get("mask_format"), "value", data_cfg.get("mask_format"))) == "binary":
            notes += _binary_with_more_values(data_cfg)
        if labels is not None and "data.num_classes" not in user_keys:
            if data_cfg.get("num_classes") not in (None, labels.num_classes) and "data.labels" in user_keys:
                notes.append(f"data.num_classes={data_cfg.num_classes} replaced by the {labels.num_classes} classes of {labels_path}")
            data_cfg.num_classes = labels.num_classes
    return notes


def fits_in_memory(decoded_bytes: int, copies: int = 1) -> bool:
    available = available_memory()
    return available is None or decoded_bytes * copies <= MEMORY_HEADROOM * available


def take_fingerprint(
    data_cfg: DictConfig, user_keys: set[str] | None = None, *, cache: bool | None = None, copies: int = 1, threads: int = 2
) -> tuple[Fingerprint, DecodedStore | None]:
    """The fingerprint of ``data_cfg``'s train and val splits, and the decoded store when the data
    was decoded whole (``cache``: True/False to force, None: when it fits in memory ``copies`` times).

    Fills in ``data.labels``, ``data.mask_format`` and ``data.num_classes`` from the files unless
    ``user_keys`` holds them.
    """
    begin = time.perf_counter()
    user_keys = user_keys or set()
    fmt = data_cfg.get("format") or data_cfg.get("name")
    if fmt not in FINGERPRINT_FORMATS:
        raise EffdetsegError(f"data={data_cfg.get('name')}: a training plan is made for image folders ({', '.join(FINGERPRINT_FORMATS)})")
    notes = read_data_statements(data_cfg, user_keys)
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val"):
        samples, problems = folder_samples(data_cfg, split)
        raise_problems(problems, f"data={data_cfg.get('name')} split {split}")
        if not samples:
            raise EffdetsegError(f"data={data_cfg.get('name')} split {split}: no image/mask pairs under {root_dir(data_cfg)}")
        splits[split] = samples
    everything = splits["train"] + splits["val"]
    notes += _unpaired_masks(data_cfg, everything)
    headers = image_headers([s.image for s in everything])
    sizes = [(h, w) for h, w, _ in headers]
    modes = Counter(mode for _, _, mode in headers)
    pixels = [h * w for h, w in sizes]
    decoded_bytes = 4 * sum(pixels)
    whole = fits_in_memory(decoded_bytes, copies) if cache is None else cache

    # Decoded with every value accepted: the class count may still be unknown.
    reader = SegmentationFiles(everything, SegmentationTransform(A.Compose([])), 255,
                               mask_reader=mask_reader_for(data_cfg), label_map=to_container(data_cfg.get("label_map")))
    store = None
    train_count = len(splits["train"])
    if whole:
        store = DecodedStore([str(s.image) for s in everything], pixels, reader.load, threads)
        masks = [store.get(str(s.image))[1] for s in splits["train"]]
        histograms = [np.bincount(m.ravel(), minlength=256) for m in masks]
    else:
        lookup = reader.lookup
        read = reader.mask_reader

        def histogram(sample: Sample) -> np.ndarray:
            mask = read(sample.mask)
            return np.bincount((lookup[mask] if lookup is not None else mask).ravel(), minlength=256)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            histograms = list(pool.map(histogram, splits["train"]))
    counts = np.stack(histograms) if histograms else np.zeros((0, 256), dtype=np.int64)
    num_classes = _class_count(data_cfg, counts, splits["train"], user_keys, notes)
    labelled = counts[:, :num_classes]
    total = max(1, int(labelled.sum()))
    names = _class_names(data_cfg, num_classes)
    sides = np.array(sizes[:train_count] or sizes)
    roots = np.sqrt(sides[:, 0] * sides[:, 1])
    fingerprint = Fingerprint(
        train_images=train_count,
        val_images=len(splits["val"]),
        median_size=(int(np.median(sides[:, 0])), int(np.median(sides[:, 1]))),
        min_side=int(sides.min()),
        max_side=int(sides.max()),
        size_spread=float(np.percentile(roots, 90) / max(1.0, np.percentile(roots, 10))),
        modes=dict(modes),
        greyscale=sum(n for m, n in modes.items() if m in GREYSCALE_MODES) / max(1, len(everything)),
        mask_format=getattr(data_cfg.get("mask_format", "ids"), "value", str(data_cfg.get("mask_format", "ids"))),
        num_classes=num_classes,
        class_names=names,
        class_pixels=tuple(float(v) / total for v in labelled.sum(0)),
        class_images=tuple(float(v) for v in (labelled > 0).mean(0)) if len(labelled) else (0.0,) * num_classes,
        ignored=float(counts[:, IGNORE_INDEX].sum()) / max(1, int(counts.sum())),
        decoded_bytes=decoded_bytes,
        seconds=time.perf_counter() - begin,
        notes=tuple(notes),
    )
    return fingerprint, store


def _unpaired_masks(data_cfg: DictConfig, samples: list[Sample]) -> list[str]:
    """One note naming the masks that have no image (they are not trained on)."""
    used = {s.mask for s in samples}
    folders = {s.mask.parent for s in samples}
    lonely = sorted(p for folder in folders for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS and not p.name.startswith(".") and p not in used)
    if not lonely or (data_cfg.get("splits") or {}).get("train", {}).get("list"):
        return []
    more = f" and {len(lonely) - 1} more" if len(lonely) > 1 else ""
    return [f"{lonely[0]}{more}: mask(s) without an image, not trained on"]


def _class_count(data_cfg: DictConfig, counts: np.ndarray, train: list[Sample], user_keys: set[str], notes: list[str]) -> int:
    """The class count: the labels file's (or the user's), else the highest mask value + 1; mask
    values beyond it stop the run naming a file that holds one."""
    present = np.flatnonzero(counts.sum(0)) if len(counts) else np.array([], dtype=np.int64)
    present = [int(v) for v in present if v != IGNORE_INDEX]
    highest = max(present, default=0)
    stated = data_cfg.get("labels") or "data.num_classes" in user_keys or data_cfg.get("format") == "camvid"
    if data_cfg.get("mask_format") == "binary":
        found = 2
    elif stated:
        found = int(data_cfg.num_classes)
    else:
        found = highest + 1
        with open_dict(data_cfg):
            data_cfg.num_classes = found
        notes.append(f"no {LABELS_FILE}: {found} classes from the mask values (0 … {highest}); "
                     f"put a {LABELS_FILE} in data.root to name them")
    beyond = [v for v in present if v >= found]
    if beyond:
        row = int(np.flatnonzero(counts[:, beyond[0]])[0])
        source = data_cfg.get("labels") or "data.num_classes"
        raise EffdetsegError(
            f"{train[row].mask}: mask value {beyond[0]} is not a class of {source} ({found} classes: 0 … {found - 1}, "
            f"255 = ignore){' and ' + str(len(beyond) - 1) + ' more values' if len(beyond) > 1 else ''}; "
            f"fix the labels file or map the value with data.label_map"
        )
    missing = [v for v in range(found) if v not in present]
    if stated and missing and data_cfg.get("mask_format") != "binary":
        notes.append(f"classes {missing} of {data_cfg.get('labels') or 'data.num_classes'} have no pixel in the training masks")
    return found


def _class_names(data_cfg: DictConfig, num_classes: int) -> tuple[str, ...]:
    if data_cfg.get("labels"):
        return LabelSet.from_json(str(data_cfg.labels)).names
    if data_cfg.get("format") == "camvid":
        return LabelSet.camvid().names
    return LabelSet.generic(num_classes).names
