"""Every data preset honours the contract keys, builds its pipelines and label set."""
from __future__ import annotations

import albumentations as A
import pytest

from effdetseg.data import build_label_set
from effdetseg.data.config import compose_config
from effdetseg.data.transforms import build_transform
from effdetseg.errors import EffdetsegError

PRESETS = ["synthetic", "voc", "voc_aug", "coco_voc", "camvid", "folder"]
CLASSES = {"synthetic": 6, "voc": 21, "voc_aug": 21, "coco_voc": 21, "camvid": 11, "folder": 21}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_contract(preset):
    cfg = compose_config([f"data={preset}"], "data_only").data
    for key in ("name", "root", "num_classes", "ignore_index", "labels", "batch_size", "num_workers"):
        assert key in cfg, key
    assert cfg.name == preset and cfg.root is None and cfg.ignore_index == 255 and cfg.labels is None
    assert cfg.num_classes == CLASSES[preset]
    assert set(cfg.preprocessing) == {"resize_height", "resize_width", "resize_mask_height", "resize_mask_width"}
    assert cfg.preprocessing.resize_mask_height == cfg.preprocessing.resize_height
    assert len(cfg.normalize.mean) == 3 and len(cfg.normalize.std) == 3
    assert build_label_set(cfg).num_classes == cfg.num_classes
    for split in ("train", "val"):
        pipeline = build_transform(cfg, split).pipeline
        assert isinstance(pipeline.transforms[-1], A.Normalize)  # normalization always last
    assert cfg.augmentation.val == []  # evaluation keeps the original size


def test_pipeline_errors_name_the_entry():
    base = ["data=voc"]
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.train\[0\] \(albumentations\.NoSuchTransform\)"):
        build_transform(compose_config([*base, "data.augmentation.train=[{_target_: albumentations.NoSuchTransform}]"], "data_only").data, "train")
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.train\[0\]: remove albumentations\.Normalize"):
        build_transform(compose_config([*base, "data.augmentation.train=[{_target_: albumentations.Normalize}]"], "data_only").data, "train")
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.val\[0\]: expected a mapping with _target_"):
        build_transform(compose_config([*base, "data.augmentation.val=[flip]"], "data_only").data, "val")
    with pytest.raises(EffdetsegError, match=r"data\.normalize"):
        build_transform(compose_config([*base, "data.normalize.std=[0.2,0.2]"], "data_only").data, "val")
