"""PASCAL VOC 2012 and VOC-aug (SegmentationClassAug, built from SBD's cls/*.mat when needed)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset

from ..io.files import atomic_write
from ..errors import EffdetsegError
from .build import num_classes_of, root_dir
from .datasets import Sample, SegmentationFiles, invalid_labels
from .files import find_pairs, raise_problems, read_id_list, resolve, split_config
from .transforms import SegmentationTransform

log = logging.getLogger(__name__)

VOC_NUM_CLASSES = 21


def voc_samples(data_cfg: DictConfig, split: str) -> tuple[list[Sample], list[str]]:
    """Listed ids of one split with their image and mask (VOC layout; both voc and voc_aug)."""
    return find_pairs(root_dir(data_cfg), split_config(data_cfg, split), f"data.splits.{split}")


def open_split(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> tuple[SegmentationFiles, list[str]]:
    """The dataset of the listed ids found, and the problems (ids without image or mask)."""
    samples, problems = voc_samples(data_cfg, split)
    return SegmentationFiles(samples, transform, num_classes_of(data_cfg)), problems


def build_voc(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> Dataset:
    dataset, problems = open_split(data_cfg, split, transform)
    raise_problems(problems, f"data={data_cfg.get('name')} split {split}")
    return dataset


def build_voc_aug(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> Dataset:
    if data_cfg.get("sbd_root") and split == "train":
        prepare_voc_aug(data_cfg)
    return build_voc(data_cfg, split, transform)


def read_sbd_mask(path: Path) -> np.ndarray:
    """The class mask (uint8 H×W) of an SBD ``cls/<id>.mat`` file (struct GTcls, field Segmentation)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), struct_as_record=False, squeeze_me=True)
        mask = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise EffdetsegError(f"{path}: SBD mask not found") from None
    except Exception as e:  # scipy raises assorted errors for damaged or foreign .mat files
        raise EffdetsegError(f"{path}: not an SBD cls .mat file with GTcls.Segmentation ({type(e).__name__}: {e})") from None
    if mask.ndim != 2 or mask.size == 0 or mask.min() < 0 or mask.max() > 255:
        raise EffdetsegError(f"{path}: GTcls.Segmentation is not a 2-D label mask")
    return mask.astype(np.uint8)


def _write_png(mask: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(mask, mode="L").save(tmp, format="PNG"))


def prepare_voc_aug(data_cfg: DictConfig, force: bool = False) -> Path:
    """Build ``SegmentationClassAug`` for every train_aug id: VOC's own mask where there is one, else SBD's.

    This is the usual recipe (VOC masks keep their 255 boundaries, SBD-only masks have none).
    Existing masks are kept unless ``force``; the directory is complete when this returns.
    """
    root = root_dir(data_cfg)
    train_cfg = split_config(data_cfg, "train")
    out_dir = resolve(root, train_cfg["masks"])
    voc_dir = resolve(root, data_cfg.get("voc_masks") or "SegmentationClass")
    sbd_root = data_cfg.get("sbd_root")
    if not sbd_root:
        raise EffdetsegError("data.sbd_root is not set: point it at an SBD release (the folder holding cls/)")
    sbd_cls = resolve(root, sbd_root)
    sbd_cls = sbd_cls / "cls" if (sbd_cls / "cls").is_dir() else sbd_cls
    if not sbd_cls.is_dir():
        raise EffdetsegError(f"data.sbd_root: {sbd_cls} is not a directory (expected SBD's cls/ with <id>.mat files)")

    ids = read_id_list(resolve(root, train_cfg["list"]), "data.splits.train.list")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    missing = []
    for sample_id in ids:
        target = out_dir / f"{sample_id}.png"
        if target.exists() and not force:
            continue
        voc_mask = voc_dir / f"{sample_id}.png"
        sbd_mask = sbd_cls / f"{sample_id}.mat"
        if voc_mask.is_file():
            atomic_write(target, lambda tmp, src=voc_mask: shutil.copyfile(src, tmp))
        elif sbd_mask.is_file():
            mask = read_sbd_mask(sbd_mask)
            bad = invalid_labels(mask, VOC_NUM_CLASSES)
            if bad:
                raise EffdetsegError(f"{sbd_mask}: label values {bad} are not VOC classes 0…20")
            _write_png(mask, target)
        else:
            missing.append(sample_id)
            continue
        written += 1
    if missing:
        raise EffdetsegError(
            f"data.sbd_root: no mask for {len(missing)} train_aug id(s) in {voc_dir} or {sbd_cls}, e.g. {missing[:3]}"
        )
    if written:
        log.info("wrote %d masks to %s", written, out_dir)
    return out_dir
