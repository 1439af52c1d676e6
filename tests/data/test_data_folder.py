"""CamVid (SegNet layout) on the real sample and custom folders: id masks, color masks, splits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdetseg.data import build_dataset, build_label_set
from effdetseg.configs.compose import compose
from effdetseg.io.labels import voc_colormap
from effdetseg.errors import EffdetsegError
from conftest import SHARED_DATA

CAMVID = SHARED_DATA / "camvid"


def folder_cfg(root: Path, *overrides: str, preset: str = "folder"):
    return compose([f"data={preset}", f"data.root={root}", "data/augmentation=none", *overrides]).data


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid sample missing at {CAMVID}")
def test_camvid_sample_loads_367_train_101_val_and_ignores_label_11():
    cfg = compose(["data=camvid", f"data.root={CAMVID}"]).data
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 367 and len(val) == 101
    raw = np.asarray(Image.open(val.samples[0].mask))
    assert (raw == 11).any()  # the raw annotation has unlabelled pixels ...
    item = val[0]
    assert item["image"].shape == (3, 360, 480)
    mask = item["mask"].numpy()
    assert np.array_equal(mask == 255, raw == 11)  # ... which become the ignore label
    assert np.array_equal(mask[raw != 11], raw[raw != 11])
    crop = (cfg.preprocessing.resize_height, cfg.preprocessing.resize_width)
    assert train[0]["image"].shape == (3, *crop)  # the preset's training crop (the training plan sets its own)
    labels = build_label_set(cfg)
    assert labels.num_classes == 11 and labels.names[0] == "sky" and labels.names[10] == "bicyclist"
    with pytest.raises(EffdetsegError, match="test"):
        build_dataset(cfg, "test")  # the SegNet test split is configured but not in the sample


def _write_folder(root: Path, n: int, colors: list[tuple[int, int, int]] | None = None) -> None:
    """n image/mask pairs (images as .jpg and .png, masks as label ids or as RGB colors)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        ids = np.zeros((24, 32), np.uint8)
        ids[:, : 4 + i % 20] = 1 + i % 2
        ext = ".jpg" if i % 2 else ".png"
        Image.fromarray(image).save(root / "images" / f"img{i:02d}{ext}")
        if colors is None:
            Image.fromarray(ids, mode="L").save(root / "masks" / f"img{i:02d}.png")
        else:
            Image.fromarray(np.array(colors, np.uint8)[ids]).save(root / "masks" / f"img{i:02d}.png")


def test_folder_id_masks_split_by_fixed_seed_ratio(tmp_path):
    _write_folder(tmp_path, 20)
    cfg = folder_cfg(tmp_path, "data.num_classes=3", "data.val_fraction=0.25", "data.split_seed=3")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    train_ids, val_ids = [s.id for s in train.samples], [s.id for s in val.samples]
    assert len(train_ids) == 15 and len(val_ids) == 5 and not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == [f"img{i:02d}" for i in range(20)]
    again = build_dataset(cfg, "val")
    assert [s.id for s in again.samples] == val_ids  # same seed, same split
    other = build_dataset(folder_cfg(tmp_path, "data.num_classes=3", "data.val_fraction=0.25", "data.split_seed=4"), "val")
    assert [s.id for s in other.samples] != val_ids
    item = val[0]
    assert item["mask"].dtype == torch.int64 and set(torch.unique(item["mask"]).tolist()) <= {0, 1, 2}
    assert build_label_set(cfg).names == ("class_0", "class_1", "class_2")
    two_classes = build_dataset(folder_cfg(tmp_path, "data.num_classes=2", "data.val_fraction=0.25"), "train")
    odd = next(i for i, s in enumerate(two_classes.samples) if int(s.id[3:]) % 2)  # odd images hold label 2
    with pytest.raises(EffdetsegError, match=r"label values \[2\]"):
        two_classes[odd]


def test_folder_split_by_list_files_and_missing_mask(tmp_path):
    _write_folder(tmp_path, 6)
    (tmp_path / "train.txt").write_text("img00\nimg01\nimg02\nimg03\n")
    (tmp_path / "val.txt").write_text("img04\nimg05\n")
    overrides = [
        "data.num_classes=3",
        "data.splits.train.list=train.txt",
        "+data.splits.val={list: val.txt, images: images, masks: masks}",
    ]
    cfg = folder_cfg(tmp_path, *overrides)
    assert [s.id for s in build_dataset(cfg, "val").samples] == ["img04", "img05"]
    assert len(build_dataset(cfg, "train")) == 4
    (tmp_path / "masks" / "img05.png").unlink()
    with pytest.raises(EffdetsegError, match="no mask for id img05"):
        build_dataset(cfg, "val")


def test_folder_color_masks_with_labels_json(tmp_path):
    colors = voc_colormap(3)
    labels = {str(i): {"class": name, "color": list(c)} for i, (name, c) in enumerate(zip(["bg", "road", "car"], colors))}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    _write_folder(tmp_path, 4, colors=colors)
    cfg = folder_cfg(tmp_path, "data.num_classes=3", "data.mask_format=color", f"data.labels={tmp_path / 'labels.json'}")
    train = build_dataset(cfg, "train")
    ids = np.zeros((24, 32), np.int64)
    ids[:, : 4 + 0] = 1
    found = {s.id: i for i, s in enumerate(train.samples)}
    assert "img00" in found
    assert np.array_equal(train[found["img00"]]["mask"].numpy(), ids)
    assert build_label_set(cfg).names == ("bg", "road", "car")
    # A color that is not in the labels file names the file and the color.
    bad = np.zeros((24, 32, 3), np.uint8)
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "masks" / "img00.png")
    with pytest.raises(EffdetsegError, match=r"img00\.png: colors \[\(1, 2, 3\)\]"):
        train[found["img00"]]
    with pytest.raises(EffdetsegError, match="data.labels"):
        build_dataset(folder_cfg(tmp_path, "data.num_classes=3", "data.mask_format=color"), "train")
    with pytest.raises(EffdetsegError, match="has 3 classes but data.num_classes is 4"):
        build_label_set(folder_cfg(tmp_path, "data.num_classes=4", f"data.labels={tmp_path / 'labels.json'}"))


def _write_binary_folder(root: Path, n: int, foreground: int) -> None:
    """n image/mask pairs whose masks are 0 (background) and ``foreground`` (255 or 1)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"img{i:02d}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[4:16, 3 + i : 20 + i] = foreground
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i:02d}.png")


@pytest.mark.parametrize("foreground", [255, 1])
def test_binary_masks_read_as_classes_0_and_1(tmp_path, foreground):
    _write_binary_folder(tmp_path, 6, foreground)
    cfg = folder_cfg(tmp_path, "data.num_classes=2", "data.mask_format=binary", "data.val_fraction=0.34")
    mask = build_dataset(cfg, "train")[0]["mask"]
    assert set(mask.unique().tolist()) == {0, 1}  # the foreground is class 1, nothing is ignored
    with pytest.raises(EffdetsegError, match="data.mask_format=binary gives 2 classes.*data.num_classes=2"):
        build_dataset(folder_cfg(tmp_path, "data.num_classes=3", "data.mask_format=binary", "data.val_fraction=0.34"), "train")


def test_data_check_and_train_flag_a_foreground_saved_as_the_ignore_label(tmp_path, capsys):
    from effdetseg.cli import main

    data = tmp_path / "data"
    _write_binary_folder(data, 6, 255)
    common = ["data=folder", f"data.root={data}", "data.num_classes=2", "data.val_fraction=0.34", "data.num_workers=0"]
    assert main(["data", "check", *common, "--no-progress"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "class 1" in line and "255" in line)
    assert "has no pixels" in line and "data.mask_format=binary" in line
    # train's plan reads the files: 0/255 masks without a labels file are taken as binary, said in one line
    assert main(["data", "plan", *common, "train.model.backbone_pretrained=false"]) == 0
    out = capsys.readouterr().out
    assert "data.mask_format=binary" in out and "2 classes (binary masks)" in out
    # declared binary: class 1 is there, no problem
    assert main(["data", "check", *common, "data.mask_format=binary", "--no-progress"]) == 0
    out = capsys.readouterr().out
    foreground = next(line for line in out.splitlines() if line.split()[:2] == ["1", "class_1"])
    assert float(foreground.split()[2].rstrip("%")) > 10.0 and "no problems found" in out
