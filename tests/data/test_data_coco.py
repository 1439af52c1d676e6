"""COCO → VOC on the real val2017 sample: class mapping, crowd/conflict ignore, filter, prepare."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from effdetseg.data import build_dataset, read_mask
from effdetseg.data.coco import COCO_IDS_IN_VOC_ORDER, load_coco, prepare_coco_voc, rasterize
from effdetseg.configs.compose import compose
from effdetseg.io.labels import LabelSet
from conftest import SHARED_DATA

COCO = SHARED_DATA / "coco_val2017_sample"
SUBSET = "annotations/instances_val2017_subset.json"

pytestmark = [
    pytest.mark.skipif(not COCO.is_dir(), reason=f"real COCO sample missing at {COCO}"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),  # pycocotools vs NumPy 2, harmless
]


def coco_cfg(root: Path, *overrides: str):
    return compose(
        [
            "data=coco_voc",
            f"data.root={root}",
            "data.num_workers=0",
            f"data.splits.val.annotations={SUBSET}",
            "data.splits.train.images=val2017",  # the sample has one split: use it as "train" too
            f"data.splits.train.annotations={SUBSET}",
            "data/augmentation=none",
            *overrides,
        ]
    ).data


def test_category_table_is_voc_order():
    coco = load_coco(COCO / SUBSET)
    names = {c["id"]: c["name"] for c in coco.cats.values()}
    voc = LabelSet.voc().names[1:]
    mapped = [names[i] for i in COCO_IDS_IN_VOC_ORDER]
    assert mapped[voc.index("person")] == "person" and mapped[voc.index("sofa")] == "couch"
    assert mapped[voc.index("diningtable")] == "dining table" and mapped[voc.index("tvmonitor")] == "tv"
    assert mapped[voc.index("aeroplane")] == "airplane" and mapped[voc.index("motorbike")] == "motorcycle"


def test_sample_maps_to_person_cat_chair_sofa_table_with_crowd_and_conflicts_ignored():
    coco = load_coco(COCO / SUBSET)
    found = set()
    crowd_checked = False
    for image_id in coco.imgs:
        mask = rasterize(coco, image_id)
        found |= set(np.unique(mask).tolist())
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=True)):
            if ann["category_id"] in COCO_IDS_IN_VOC_ORDER:
                crowd = coco.annToMask(ann).astype(bool)
                assert (mask[crowd] == 255).all()  # a crowd region of a VOC class is ignored
                crowd_checked = True
        # Where two different VOC classes' instances overlap, the pixel is ignored.
        per_class: dict[int, np.ndarray] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=list(COCO_IDS_IN_VOC_ORDER), iscrowd=False)):
            per_class.setdefault(ann["category_id"], np.zeros(mask.shape, bool))
            per_class[ann["category_id"]] |= coco.annToMask(ann).astype(bool)
        cover = sum(m.astype(int) for m in per_class.values()) if per_class else np.zeros(mask.shape, int)
        assert (mask[cover >= 2] == 255).all()
    names = LabelSet.voc().names
    assert {names[v] for v in found if v not in (0, 255)} == {"person", "cat", "chair", "sofa", "diningtable"}
    assert crowd_checked and 255 in found


def test_on_the_fly_and_prepared_masks_agree_and_small_training_images_are_skipped(tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(COCO / "val2017", root / "val2017")
    shutil.copytree(COCO / "annotations", root / "annotations")
    cfg = coco_cfg(root)
    val = build_dataset(cfg, "val")
    assert len(val) == 10  # evaluation keeps every image
    coco = load_coco(root / SUBSET)
    labelled = {}
    for image_id, info in coco.imgs.items():
        m = rasterize(coco, image_id)
        labelled[Path(info["file_name"]).stem] = int(((m > 0) & (m < 255)).sum())
    expected_train = sorted(k for k, v in labelled.items() if v >= 1000)
    assert 0 < len(expected_train) < 10
    train = build_dataset(cfg, "train")
    assert sorted(train.sample_id(i) for i in range(len(train))) == expected_train

    written = prepare_coco_voc(cfg, progress=False)
    assert written == {"train": 10, "val": 10}
    index = json.loads((root / "voc_masks/val2017/index.json").read_text())
    assert {Path(k).stem: v for k, v in index["labelled_pixels"].items()} == labelled
    prepared_val = build_dataset(cfg, "val")
    assert type(prepared_val).__name__ == "SegmentationFiles" and len(prepared_val) == 10
    for i in range(len(val)):
        on_the_fly = val[i]
        from_png = prepared_val[[s.id for s in prepared_val.samples].index(on_the_fly["id"])]
        assert np.array_equal(on_the_fly["mask"].numpy(), from_png["mask"].numpy())
        assert np.array_equal(on_the_fly["image"].numpy(), from_png["image"].numpy())
    prepared_train = build_dataset(cfg, "train")
    assert sorted(s.id for s in prepared_train.samples) == expected_train
    assert read_mask(root / "voc_masks/val2017" / f"{expected_train[0]}.png").max() <= 255


def test_prepare_command_and_missing_annotations(tmp_path, capsys):
    from effdetseg.cli import main

    root = tmp_path / "coco"
    shutil.copytree(COCO / "val2017", root / "val2017")
    shutil.copytree(COCO / "annotations", root / "annotations")
    rc = main(["data", "prepare", "coco_voc", f"data.root={root}", f"data.splits.val.annotations={SUBSET}", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "coco_voc val: 10 masks" in out and "train" not in out  # train2017 annotations absent: skipped
    assert len(list((root / "voc_masks/val2017").glob("*.png"))) == 10
    rc = main(["data", "prepare", "coco_voc", f"data.root={root}", "--no-progress"])
    assert rc == 2
    assert "annotations" in capsys.readouterr().err
