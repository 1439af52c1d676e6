"""The synthetic default dataset: contract items, determinism, class by shape (not by color), config."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from effdetseg.data import build_dataset, build_label_set, collate_pad
from effdetseg.configs.compose import compose
from effdetseg.data.synthetic import render_scene
from effdetseg.errors import EffdetsegError

SHAPES = ["circle", "square", "triangle", "ring", "cross"]


def data_cfg(*overrides: str):
    return compose(["data=synthetic", *overrides]).data


def test_default_preset_items_follow_the_contract():
    cfg = data_cfg()
    assert cfg.name == "synthetic" and cfg.root is None and cfg.ignore_index == 255
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == cfg.train_samples and len(val) == cfg.val_samples
    item = train[3]
    assert set(item) == {"image", "mask", "id"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 128, 128)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (128, 128)
    assert isinstance(item["id"], str)
    assert int(item["mask"].max()) < cfg.num_classes
    # Normalized with the configured mean/std: roughly zero-centred, not 0…255 or 0…1.
    assert -2.5 < float(item["image"].mean()) < 2.5 and float(item["image"].std()) > 0.2
    labels = build_label_set(cfg)
    assert labels.names == ("background", *SHAPES) and labels.num_classes == cfg.num_classes


def test_scenes_are_deterministic_and_splits_differ():
    cfg = data_cfg("data.augmentation.train=[]")  # no random flips: compare raw content
    a, b = build_dataset(cfg, "train"), build_dataset(cfg, "train")
    assert torch.equal(a[5]["image"], b[5]["image"]) and torch.equal(a[5]["mask"], b[5]["mask"])
    assert not torch.equal(a[5]["mask"], a[6]["mask"])
    val = build_dataset(cfg, "val")
    assert not torch.equal(a[5]["image"][:, :8, :8], val[5]["image"][:, :8, :8])
    assert a[5]["id"] != val[5]["id"]
    image1, mask1 = render_scene(7, 11, 96, 80, SHAPES)
    image2, mask2 = render_scene(7, 11, 96, 80, SHAPES)
    assert image1.shape == (96, 80, 3) and mask1.shape == (96, 80)
    assert np.array_equal(image1, image2) and np.array_equal(mask1, mask2)


def test_every_shape_appears_and_objects_overlap_sometimes():
    counts = np.zeros(len(SHAPES) + 1, np.int64)
    objects_per_scene = []
    for i in range(60):
        _, mask = render_scene(0, i, 128, 128, SHAPES)
        counts += np.bincount(mask.ravel(), minlength=len(SHAPES) + 1)
        objects_per_scene.append(len(np.unique(mask)) - 1)
    assert (counts[1:] > 0.01 * counts.sum()).all(), counts  # each shape class is well represented
    assert 0.5 < counts[0] / counts.sum() < 0.95  # background dominates but is not everything
    assert max(objects_per_scene) >= 3


def test_class_is_not_predictable_from_color():
    """Each shape gets colors from the same distribution: mean object colors per class agree."""
    per_class: dict[int, list[np.ndarray]] = {k: [] for k in range(1, len(SHAPES) + 1)}
    for i in range(150):
        image, mask = render_scene(3, i, 96, 96, SHAPES)
        for k in per_class:
            if (mask == k).sum() > 30:
                per_class[k].append(image[mask == k].mean(0))
    means = np.array([np.mean(v, axis=0) for v in per_class.values()])
    spreads = np.array([np.std(v, axis=0) for v in per_class.values()])
    assert (spreads > 40).all()  # colors vary a lot within each class ...
    assert np.abs(means - means.mean(0)).max() < 35  # ... and their means match across classes


def test_config_knobs_and_bad_values():
    cfg = data_cfg(
        "data.preprocessing.resize_height=64",
        "data.preprocessing.resize_width=96",
        "data.train_samples=10",
        "data.shapes=[circle,square,triangle]",
        "data.num_classes=4",
    )
    ds = build_dataset(cfg, "train")
    assert len(ds) == 10 and ds[0]["image"].shape == (3, 64, 96)
    assert build_label_set(cfg).names == ("background", "circle", "square", "triangle")
    with pytest.raises(EffdetsegError, match="num_classes"):
        build_dataset(data_cfg("data.shapes=[circle,square]"), "train")
    with pytest.raises(EffdetsegError, match="hexagonz"):
        build_dataset(data_cfg("data.shapes=[circle,square,triangle,ring,hexagonz]"), "train")
    with pytest.raises(EffdetsegError, match="split"):
        build_dataset(data_cfg(), "test")


def test_collate_pad_pads_images_with_zero_and_masks_with_ignore():
    items = [
        {"image": torch.ones(3, 4, 6), "mask": torch.zeros(4, 6, dtype=torch.int64), "id": "a"},
        {"image": torch.full((3, 5, 3), 2.0), "mask": torch.ones(5, 3, dtype=torch.int64), "id": "b"},
    ]
    batch = collate_pad(items)
    assert batch["image"].shape == (2, 3, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert batch["mask"].dtype == torch.int64 and batch["id"] == ["a", "b"]
    assert batch["size"].tolist() == [[4, 6], [5, 3]] and batch["size"].dtype == torch.int64
    assert (batch["image"][0, :, 4:, :] == 0).all() and (batch["image"][0, :, :4, :] == 1).all()
    assert (batch["mask"][0, 4:, :] == 255).all() and (batch["mask"][0, :4, :] == 0).all()
    assert (batch["mask"][1, :, 3:] == 255).all() and (batch["image"][1, :, :, 3:] == 0).all()
    assert (batch["mask"][1, :, :3] == 1).all()


def test_dataloader_with_workers_batches_the_synthetic_set():
    cfg = data_cfg("data.train_samples=8")
    loader = torch.utils.data.DataLoader(build_dataset(cfg, "train"), batch_size=4, num_workers=1, collate_fn=collate_pad)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 128, 128)
