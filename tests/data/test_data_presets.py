"""Every data preset honours the contract keys, builds its pipelines and label set."""
from __future__ import annotations

import albumentations as A
import pytest
import torch

from effdetseg.data import build_label_set
from effdetseg.configs.compose import compose
from effdetseg.data.transforms import build_transform
from effdetseg.errors import EffdetsegError

PRESETS = ["synthetic", "voc", "voc_aug", "coco_voc", "camvid", "folder"]
CLASSES = {"synthetic": 6, "voc": 21, "voc_aug": 21, "coco_voc": 21, "camvid": 11, "folder": 21}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_contract(preset):
    cfg = compose([f"data={preset}"]).data
    for key in ("name", "root", "num_classes", "ignore_index", "labels", "batch_size", "num_workers"):
        assert key in cfg, key
    assert cfg.name == preset and cfg.root is None and cfg.ignore_index == 255 and cfg.labels is None
    assert cfg.num_classes == CLASSES[preset]
    assert set(cfg.preprocessing) == {"resize_height", "resize_width", "resize_mask_height", "resize_mask_width", "inference_size"}
    assert cfg.preprocessing.resize_mask_height == cfg.preprocessing.resize_height
    assert len(cfg.normalize.mean) == 3 and len(cfg.normalize.std) == 3
    assert build_label_set(cfg).num_classes == cfg.num_classes
    for split in ("train", "val"):
        pipeline = build_transform(cfg, augment=split == "train").pipeline
        assert isinstance(pipeline.transforms[-1], A.Normalize)  # normalization always last
    assert cfg.augmentation.val == []  # validation images get no augmentation (the inference path resizes them)


def test_pipeline_errors_name_the_entry():
    base = ["data=voc"]
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.train\[0\] \(albumentations\.NoSuchTransform\)"):
        build_transform(compose([*base, "data.augmentation.train=[{_target_: albumentations.NoSuchTransform}]"]).data, augment=True)
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.train\[0\]: remove albumentations\.Normalize"):
        build_transform(compose([*base, "data.augmentation.train=[{_target_: albumentations.Normalize}]"]).data, augment=True)
    with pytest.raises(EffdetsegError, match=r"data\.augmentation\.val\[0\]: expected a mapping with _target_"):
        build_transform(compose([*base, "data.augmentation.val=[flip]"]).data, augment=False)
    with pytest.raises(EffdetsegError, match=r"data\.normalize"):
        build_transform(compose([*base, "data.normalize.std=[0.2,0.2]"]).data, augment=False)


def test_inference_items_are_the_raw_uint8_image_and_every_dataset_has_the_seeding_hook():
    from effdetseg.data import AugmentedDataset, build_dataset
    from effdetseg.data.build import dataset_splits

    cfg = compose(["data.val_samples=2", "data.train_samples=2"]).data
    raw = build_dataset(cfg, "val", normalize=False)
    image, mask = raw.load(0)
    item = raw[0]
    assert item["image"].dtype == torch.uint8 and torch.equal(item["image"].permute(1, 2, 0), torch.from_numpy(image))
    assert torch.equal(item["mask"], torch.from_numpy(mask).long())
    assert build_dataset(cfg, "val")[0]["image"].dtype == torch.float32  # the training items are normalized
    assert dataset_splits(cfg) == ("train", "val")
    train = build_dataset(cfg, "train")
    assert isinstance(train, AugmentedDataset)
    # An (index, seed) key seeds the augmentation of that item: the same seed draws the same
    # flips whatever came before, other seeds others.
    def draws(seeds):
        return [hash(train[(0, seed)]["image"].numpy().tobytes()) for seed in seeds]

    first = draws(range(8))
    train[0]  # an unseeded item in between changes nothing
    assert draws(range(8)) == first and len(set(first)) > 1
