"""`effdetseg data check`: counts per split, class pixel frequencies, every problem, exit codes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from effdetseg.cli import main
from conftest import SHARED_DATA

VOC = SHARED_DATA / "voc2012_sample"

pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"real VOC sample missing at {VOC}")


def test_check_clean_voc_sample(capsys):
    rc = main(["data", "check", "data=voc", f"data.root={VOC}", "data.num_workers=0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "train: 2 samples" in out and "val: 2 samples" in out and "no problems found" in out
    person = next(line for line in out.splitlines() if line.split()[:2] == ["15", "person"])
    train_pct, val_pct = (float(v.rstrip("%")) for v in person.split()[2:4])
    assert 1.0 < train_pct < 60.0 and 1.0 < val_pct < 60.0
    ignore = next(line for line in out.splitlines() if "(ignore)" in line)
    assert float(ignore.split()[2].rstrip("%")) > 0


def test_check_lists_every_problem_and_exits_nonzero(tmp_path, capsys):
    root = tmp_path / "voc"
    shutil.copytree(VOC, root)
    lst = root / "ImageSets/Segmentation/train.txt"
    lst.write_text(lst.read_text() + "ghost\n" + "2007_000033\n")  # a missing id, and a val id in train
    mask_path = root / "SegmentationClass/2007_000129.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:2, :2] = 77
    Image.fromarray(mask, mode="L").save(mask_path)
    jpg = root / "JPEGImages/2007_000032.jpg"
    jpg.write_bytes(jpg.read_bytes()[:2000])
    rc = main(["data", "check", "data=voc", f"data.root={root}", "data.num_workers=0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "4 problem(s)" in out, out
    assert "no image for id ghost" in out
    assert "2007_000129.png: label values [77]" in out
    assert "2007_000032.jpg: unreadable or truncated" in out
    assert "1 id(s) are in both train and val" in out
    assert "train: 2 samples" in out  # 2011_003066 and the duplicated 2007_000033 still scanned


def test_check_synthetic_and_bad_override(capsys):
    rc = main(["data", "check", "data.train_samples=6", "data.val_samples=3", "data.num_workers=0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "train: 6 samples" in out and "val: 3 samples" in out and "circle" in out
    assert main(["data", "check", "data.no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effdetseg data: error: unknown key 'data.no_such_key'"
    assert main(["data", "check", "data=nope"]) == 2
    assert "data=nope: no such data preset; choose from camvid, coco_voc, folder, synthetic, voc, voc_aug" in capsys.readouterr().err
