"""COCO instances mapped to the 20 PASCAL VOC classes (the torchvision/DeepLab recipe).

Instance masks (polygons or RLE, decoded by pycocotools) are unioned per VOC class; a pixel
claimed by two different classes, or covered by a crowd region of a VOC class, becomes 255.
Training images with fewer than ``min_labelled_pixels`` VOC-class pixels are skipped.
``prepare_coco_voc`` rasterizes every split once to label PNGs plus an ``index.json``; when that
index exists the dataset reads the PNGs instead of decoding polygons every epoch.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..io.files import atomic_write
from ..errors import EffdetsegError
from .build import num_classes_of, root_dir, scan_workers
from .datasets import AugmentedDataset, Sample, SegmentationFiles
from .files import resolve, split_config
from .image_io import read_image
from ..io.labels import IGNORE_INDEX
from .transforms import SegmentationTransform

log = logging.getLogger(__name__)

# COCO category id of each VOC class 1…20, in VOC order (aeroplane=5, bicycle=2, …, tvmonitor=72).
COCO_IDS_IN_VOC_ORDER = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
COCO_TO_VOC = {coco_id: voc_id for voc_id, coco_id in enumerate(COCO_IDS_IN_VOC_ORDER, start=1)}
INDEX_FILE = "index.json"


def load_coco(path: Path):
    """A pycocotools COCO index of an instances JSON (its progress prints silenced)."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise EffdetsegError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise EffdetsegError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None


def rasterize(coco, image_id: int) -> np.ndarray:
    """The VOC label mask (uint8 H×W: 0 background, 1…20, 255 conflict/crowd) of one COCO image."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    conflict = np.zeros(mask.shape, bool)
    crowd = np.zeros(mask.shape, bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=list(COCO_TO_VOC), iscrowd=None)):
        region = coco.annToMask(ann).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= region
            continue
        voc_id = COCO_TO_VOC[ann["category_id"]]
        conflict |= region & (mask != 0) & (mask != voc_id)
        mask[region & (mask == 0)] = voc_id
    mask[conflict | crowd] = IGNORE_INDEX
    return mask


def labelled_pixels(mask: np.ndarray) -> int:
    """Pixels of a VOC object class (not background, not ignore)."""
    return int(np.count_nonzero((mask > 0) & (mask != IGNORE_INDEX)))


def _split_paths(data_cfg: DictConfig, split: str) -> tuple[Path, Path, Path]:
    root = root_dir(data_cfg)
    cfg = split_config(data_cfg, split)
    for field in ("images", "annotations", "masks"):
        if not cfg.get(field):
            raise EffdetsegError(f"data.splits.{split}.{field} is not set")
    return resolve(root, cfg["images"]), resolve(root, cfg["annotations"]), resolve(root, cfg["masks"])


class CocoVoc(AugmentedDataset):
    """COCO images with VOC masks rasterized on the fly (use ``data prepare coco_voc`` to do it once)."""

    def __init__(self, coco, image_dir: Path, image_ids: list[int], transform: SegmentationTransform) -> None:
        self.coco, self.image_dir, self.image_ids, self.transform = coco, image_dir, image_ids, transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        mask = rasterize(self.coco, image_id)
        if image.shape[:2] != mask.shape:
            raise EffdetsegError(f"{path}: image is {image.shape[1]}×{image.shape[0]} but its annotation says {mask.shape[1]}×{mask.shape[0]}")
        return image, mask

    def sample_id(self, index: int) -> str:
        return Path(self.coco.imgs[self.image_ids[index]]["file_name"]).stem


def _read_index(mask_dir: Path, annotations: Path) -> dict[str, int] | None:
    """Labelled-pixel counts per image file name, if ``mask_dir`` was prepared from ``annotations``."""
    index_path = mask_dir / INDEX_FILE
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if Path(index["annotations"]).resolve() != annotations.resolve():
            log.warning("%s was prepared from %s, not %s: ignoring it", index_path, index["annotations"], annotations)
            return None
        return {str(k): int(v) for k, v in index["labelled_pixels"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise EffdetsegError(f"{index_path}: damaged prepare index ({e}); run `effdetseg data prepare coco_voc` again") from None


def min_pixels_for(data_cfg: DictConfig, split: str) -> int:
    return int(data_cfg.get("min_labelled_pixels", 1000)) if split == "train" else 0


def build_coco_voc(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> Dataset:
    if num_classes_of(data_cfg) != 21:
        raise EffdetsegError(f"data.num_classes must be 21 for coco_voc (background + 20 VOC classes), got {data_cfg.num_classes}")
    image_dir, annotations, mask_dir = _split_paths(data_cfg, split)
    if not image_dir.is_dir():
        raise EffdetsegError(f"data.splits.{split}.images: {image_dir} is not a directory")
    min_pixels = min_pixels_for(data_cfg, split)

    prepared = _read_index(mask_dir, annotations)
    if prepared is not None:
        samples = []
        for file_name, count in sorted(prepared.items()):
            if count < min_pixels:
                continue
            stem = Path(file_name).stem
            samples.append(Sample(stem, image_dir / file_name, mask_dir / f"{stem}.png"))
        return SegmentationFiles(samples, transform, 21)

    coco = load_coco(annotations)
    image_ids = sorted(coco.imgs)
    if min_pixels > 0:
        log.info("rasterizing %d COCO images to apply min_labelled_pixels; `effdetseg data prepare coco_voc` does it once", len(image_ids))
        image_ids = [i for i in image_ids if labelled_pixels(rasterize(coco, i)) >= min_pixels]
    return CocoVoc(coco, image_dir, image_ids, transform)


class _RasterizeAndWrite(Dataset):
    """One item = rasterize one image's mask and write it; run through a DataLoader for worker processes."""

    def __init__(self, coco, image_ids: list[int], mask_dir: Path) -> None:
        self.coco, self.image_ids, self.mask_dir = coco, image_ids, mask_dir

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[str, int]:
        file_name = self.coco.imgs[self.image_ids[index]]["file_name"]
        mask = rasterize(self.coco, self.image_ids[index])
        target = self.mask_dir / f"{Path(file_name).stem}.png"
        atomic_write(target, lambda tmp: Image.fromarray(mask, mode="L").save(tmp, format="PNG"))
        return file_name, labelled_pixels(mask)


def _configured(data_cfg: DictConfig, split: str) -> bool:
    splits = data_cfg.get("splits") or {}
    return splits.get(split) is not None


def prepare_coco_voc(data_cfg: DictConfig, splits: tuple[str, ...] = ("train", "val"), progress: bool = True) -> dict[str, int]:
    """Rasterize each configured split whose annotation file exists; returns masks written per split."""
    from tqdm import tqdm

    written: dict[str, int] = {}
    for split in splits:
        if not _configured(data_cfg, split):
            continue
        image_dir, annotations, mask_dir = _split_paths(data_cfg, split)
        if not annotations.is_file():
            log.warning("data.splits.%s.annotations: %s not found, split skipped", split, annotations)
            continue
        coco = load_coco(annotations)
        mask_dir.mkdir(parents=True, exist_ok=True)
        job = _RasterizeAndWrite(coco, sorted(coco.imgs), mask_dir)
        loader = DataLoader(job, batch_size=None, num_workers=scan_workers(data_cfg))
        counts = dict(tqdm(loader, total=len(job), desc=f"coco_voc {split}", disable=not progress))
        index = {"annotations": str(annotations.resolve()), "labelled_pixels": counts}
        atomic_write(mask_dir / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(index)))
        written[split] = len(counts)
    if not written:
        raise EffdetsegError("data.splits.*.annotations: none of the configured COCO annotation files exist under data.root")
    return written
