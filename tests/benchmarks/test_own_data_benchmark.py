"""benchmarks/own_data.py: the fixed test split (every 5th sorted id) and the temporary roots built
from it; quality.py's loop on folders of images of varied sizes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import own_data  # noqa: E402
import quality  # noqa: E402


def test_every_fifth_sorted_id_is_test():
    ids = [f"{i:03d}" for i in range(12)][::-1]  # listed out of order
    train, test = own_data.split_ids(ids)
    assert test == ["000", "005", "010"]
    assert train == [f"{i:03d}" for i in range(12) if i % 5]
    assert own_data.split_ids(["b", "a"]) == (["b"], ["a"])
    with pytest.raises(SystemExit):
        own_data.split_ids(["a", "a"])


@pytest.fixture
def own_set(tmp_path: Path) -> Path:
    """A folder set: RGB and greyscale JPEGs of two sizes, label-id masks, labels.json, train.txt."""
    source = tmp_path / "set"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    ids = [f"img{i}" for i in range(7)]
    for i, sample_id in enumerate(ids):
        height, width = (40, 60) if i % 2 else (70, 30)
        mode = "L" if i == 3 else "RGB"
        Image.new(mode, (width, height), 100).save(source / "images" / f"{sample_id}.jpg")
        mask = np.full((height, width), i % 2, np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(source / "masks" / f"{sample_id}.png")
    labels = {"0": {"class": "background", "color": [0, 0, 0]}, "1": {"class": "thing", "color": [255, 255, 255]}}
    (source / "labels.json").write_text(json.dumps(labels))
    (source / "train.txt").write_text("\n".join(reversed(ids)) + "\n")
    return source


def test_roots_hold_only_their_ids(own_set: Path, tmp_path: Path):
    from effdetseg.configs.compose import compose
    from effdetseg.data.folder import folder_samples

    train, test = own_data.split_ids(quality.folder_ids(own_set))
    assert test == ["img0", "img5"]
    root = own_data.link_root(own_set, train, tmp_path / "train")
    test_root = own_data.link_root(own_set, test, tmp_path / "test")
    assert sorted(p.stem for p in (root / "images").iterdir()) == train
    assert sorted(p.stem for p in (root / "masks").iterdir()) == train
    assert all(p.is_symlink() and p.resolve().parent == own_set / "images" for p in (root / "images").iterdir())
    assert (root / "train.txt").read_text().split() == train
    assert quality.folder_classes(root) == quality.folder_classes(test_root) == ("background", "thing")

    # what the library finds in the test root when evaluate points its val split at it
    cfg = compose(["data=folder", f"data.root={test_root}", "data.splits.val={images:images,masks:masks,list:null}"], section="data")
    samples, problems = folder_samples(cfg.data, "val")
    assert sorted(s.id for s in samples) == test and not problems

    # the baseline loop's loader: every training id, greyscale read as RGB, each at its own size
    images, masks = quality.load_folder(root)
    assert len(images) == len(train) and all(im.ndim == 3 and im.shape[2] == 3 for im in images)
    assert {m.shape for m in masks} == {(40, 60), (70, 30)}
    assert all(im.shape[:2] == m.shape for im, m in zip(images, masks))

    # crops larger than the images: padded, the mask with the ignore label
    batch, target = quality.CropSampler(images, masks, 4, 64, seed=0).next()
    assert tuple(batch.shape) == (4, 3, 64, 64) and tuple(target.shape) == (4, 64, 64)
    assert (target == 255).any() and set(target.unique().tolist()) <= {0, 1, 255}


def test_expand_extra_and_command(own_set: Path, tmp_path: Path):
    train, test = own_data.split_ids(quality.folder_ids(own_set))
    bench = own_data.BenchSet("set", ("background", "thing"), len(train), len(test),
                              own_data.link_root(own_set, train, tmp_path / "train"), own_data.link_root(own_set, test, tmp_path / "test"))
    extra = own_data.expand_extra("data.num_classes={num_classes} data.labels={labels} 'data.normalize.mean=[0.5,0.5,0.5]'", bench)
    assert extra == ["data.num_classes=2", f"data.labels={tmp_path / 'train' / 'labels.json'}", "data.normalize.mean=[0.5,0.5,0.5]"]
    command = own_data.product_command(bench, 10, "/w.pth", tmp_path / "exp", "set_product", [])
    assert command.startswith(f"effdetseg train data=folder data.root={tmp_path / 'train'} train.max_minutes=10 ")
    camvid = own_data.BenchSet("camvid", quality.CLASSES, 367, 101)
    assert own_data.expand_extra("data.labels={labels} data.num_classes={num_classes}", camvid) == ["data.num_classes=11"]


def test_ratios_to_the_fpn():
    rows = [{"set": "a", "model": "product", "miou": 0.8}, {"set": "a", "model": "smp_fpn", "miou": 0.6},
            {"set": "b", "model": "product", "miou": 0.5}]
    own_data.add_ratios(rows)
    assert rows[0]["miou_ratio"] == pytest.approx(0.8 / 0.6) and rows[0]["error_ratio"] == pytest.approx(0.2 / 0.4)
    assert rows[1]["error_ratio"] == pytest.approx(1.0)
    assert rows[2]["miou_ratio"] is None and rows[2]["error_ratio"] is None


def test_the_load_of_other_processes_is_measured_apart_from_the_run(monkeypatch):
    # The machine's busy seconds, this process's children's CPU seconds and the wall clock, as
    # read at the start and at the end of a run.
    readings = {"busy": iter([100.0, 130.0]), "children": iter([5.0, 23.0]), "clock": iter([0.0, 10.0])}
    monkeypatch.setattr(own_data.OtherLoad, "_busy_s", staticmethod(lambda: next(readings["busy"])))
    monkeypatch.setattr(own_data.OtherLoad, "_children_s", staticmethod(lambda: next(readings["children"])))
    monkeypatch.setattr(own_data.time, "perf_counter", lambda: next(readings["clock"]))
    with own_data.OtherLoad() as load:
        pass
    assert load.cores == pytest.approx((30.0 - 18.0) / 10.0)  # 30 busy seconds, 18 of them the run's own

    # The real counters: a child's CPU time is the run's own, not other load.
    monkeypatch.undo()
    assert own_data.OtherLoad._busy_s() > 0
    before = own_data.OtherLoad._children_s()
    import subprocess

    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert own_data.OtherLoad._children_s() > before


def test_seeds_are_averaged_against_the_fpns_mean():
    rows = [{"set": "s", "model": "smp_fpn", "seed": 0, "miou": 0.6}, {"set": "s", "model": "smp_fpn", "seed": 1, "miou": 0.8},
            {"set": "s", "model": "product", "seed": 0, "miou": 0.8}, {"set": "s", "model": "product", "seed": 1, "miou": 0.9}]
    own_data.add_ratios(rows)
    assert rows[2]["error_ratio"] == pytest.approx(0.2 / 0.3)
    (fpn, product) = own_data.summary(rows)
    assert product["seeds"] == 2 and product["miou_mean"] == pytest.approx(0.85)
    assert product["miou_sd"] == pytest.approx(0.0707, abs=1e-3) and product["error_ratio"] == pytest.approx(0.15 / 0.3)
    assert "| s | product | 2 | 85.0 | 7.1 | 0.500 | – |" in own_data.summary_table(rows)
    rows.append({"set": "s", "model": "product[no freeze]", "seed": 0, "miou": 0.82})
    assert own_data.summary(rows)[-1]["vs_plan"] == pytest.approx(-0.03)


def test_variants_parse_and_refuse_in_one_line():
    assert own_data.run_label("product[no Lovász]") == "product_no_Lov_sz"
    assert own_data.parse_variants("no freeze=train.freeze_backbone_stride=0; ce=train.loss.region=null a=b;") == [
        ("no freeze", "train.freeze_backbone_stride=0"), ("ce", "train.loss.region=null a=b")]
    for bad in ("nofreeze", "=x=1", "a/b=x=1"):
        with pytest.raises(SystemExit, match="--product-variants"):
            own_data.parse_variants(bad)
