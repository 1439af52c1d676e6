"""Listing image/mask pairs on disk: by id list, or by matching file stems in two directories.

Every file layout (VOC, VOC-aug, CamVid, custom folders, prepared COCO masks) reduces to a
``list[Sample]`` per split plus a list of problems (missing files), so ``effdetseg data check``
can report all of them while ``build_dataset`` fails on the first few.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import EffdetsegError
from .datasets import Sample
from .image_io import IMAGE_EXTENSIONS

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


def resolve(root: Path, path: str | Path) -> Path:
    """``path`` relative to the dataset root unless absolute (or ``~``)."""
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else root / p


def read_id_list(path: Path, key: str) -> list[str]:
    """Ids from a list file, one per line; blank lines skipped, extra columns (``id path``) ignored."""
    if not path.is_file():
        raise EffdetsegError(f"{key}: list file {path} not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise EffdetsegError(f"{key}: list file {path} is empty")
    # Lists sometimes hold paths ("/JPEGImages/2007_000032.jpg"); the id is then the stem.
    known = IMAGE_EXTENSIONS + MASK_EXTENSIONS
    return [Path(i).stem if "/" in i or Path(i).suffix.lower() in known else i for i in ids]


def _index_by_stem(directory: Path, extensions: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """(stem → file, stem → every file of a stem that more than one file has: ``a.jpg`` and ``a.png``)."""
    found: dict[str, Path] = {}
    shared: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."):
            if p.stem in found:
                shared.setdefault(p.stem, [found[p.stem]]).append(p)
            else:
                found[p.stem] = p
    return found, shared


def find_pairs(
    root: Path,
    split_cfg: DictConfig | dict,
    key: str,
    image_extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    mask_extensions: tuple[str, ...] = MASK_EXTENSIONS,
) -> tuple[list[Sample], list[str]]:
    """(samples, problems) for one split: ``{images: DIR, masks: DIR, list: FILE or null}``.

    With a list, every listed id must have an image and a mask (a missing one is a problem naming
    the id). Without one, images are paired with masks by file stem; an image without a mask is a
    problem, a mask without an image is ignored. Two images (or masks) of one stem (``a.jpg`` and
    ``a.png``) are a problem naming both: neither is dropped unseen.
    """
    for field in ("images", "masks"):
        if not split_cfg.get(field):
            raise EffdetsegError(f"{key}.{field} is not set")
    image_dir, mask_dir = resolve(root, split_cfg["images"]), resolve(root, split_cfg["masks"])
    if not image_dir.is_dir():
        raise EffdetsegError(f"{key}.images: {image_dir} is not a directory")
    if not mask_dir.is_dir():
        raise EffdetsegError(f"{key}.masks: {mask_dir} is not a directory")
    images, shared_images = _index_by_stem(image_dir, image_extensions)
    masks, shared_masks = _index_by_stem(mask_dir, mask_extensions)

    list_file = split_cfg.get("list")
    if list_file:
        ids = read_id_list(resolve(root, list_file), f"{key}.list")
    else:
        ids = sorted(images)
        if not ids:
            raise EffdetsegError(f"{key}.images: no images ({', '.join(image_extensions)}) in {image_dir}")

    samples, problems = [], []
    for sample_id in ids:
        image, mask = images.get(sample_id), masks.get(sample_id)
        shared = shared_images.get(sample_id) or shared_masks.get(sample_id)
        if shared:  # which one the id means is not for us to guess (one of them would be left out unseen)
            names = ", ".join(p.name for p in shared)
            problems.append(f"{shared[0].parent}: {len(shared)} files share the id {sample_id} ({names}); rename or remove all but one")
        elif image is None:
            problems.append(f"{image_dir}: no image for id {sample_id}")
        elif mask is None:
            problems.append(f"{mask_dir}: no mask for id {sample_id} (image {image.name})")
        else:
            samples.append(Sample(sample_id, image, mask))
    return samples, problems


def split_by_fraction(samples: list[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """A fixed-seed random train/val split (same result on every run and machine)."""
    if not 0.0 < val_fraction < 1.0:
        raise EffdetsegError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    order = sorted(samples, key=lambda s: s.id)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction))
    if n_val >= len(order):
        raise EffdetsegError(f"data.val_fraction {val_fraction} leaves no training samples out of {len(order)}")
    return {"val": sorted(order[:n_val], key=lambda s: s.id), "train": sorted(order[n_val:], key=lambda s: s.id)}


def raise_problems(problems: list[str], what: str) -> None:
    """Fail loudly on missing files, naming the first few and how many there are."""
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more; run `effdetseg data check` for the full list)" if len(problems) > 3 else ""
        raise EffdetsegError(f"{what}: {shown}{more}")


def split_config(data_cfg: DictConfig, split: str) -> Any:
    splits = data_cfg.get("splits")
    if not splits or split not in splits or splits[split] is None:
        raise EffdetsegError(f"data.splits.{split} is not configured for data={data_cfg.get('name')}")
    return splits[split]
