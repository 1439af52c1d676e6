"""evaluate measures what predict outputs: same record preprocessing, same inference path; --split, --original-size."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.data import read_mask
from effdetseg.engine.metrics import ConfusionMatrix
from effdetseg.io.labels import LabelSet
from effdetseg.io.record import Preprocessing, ResizeMode
from conftest import SHARED_DATA

VOC = SHARED_DATA / "voc2012_sample"
CAMVID = SHARED_DATA / "camvid"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 21-class model whose record resizes to a non-square 64×80 (not the images' size)."""
    if not VOC.is_dir():
        pytest.fail(f"{VOC} is missing: the tests need ../shared/data beside the repository")
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=21, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    with torch.no_grad():  # a random network predicts one class everywhere; make its argmax follow the image
        model.head.classifier.weight.normal_(0.0, 3.0)
        model.head.classifier.bias.zero_()
    path = tmp_path_factory.mktemp("evaluate") / "best.pth"
    preprocessing = Preprocessing((64, 80), ResizeMode.fixed, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    save_model(model, path, preprocessing=preprocessing, labels=LabelSet.voc())
    return path


@pytest.mark.slow
def test_predict_label_maps_give_the_confusion_matrix_evaluate_reports(checkpoint: Path, tmp_path: Path, capsys) -> None:
    voc = ["data=voc", f"data.root={VOC}", "data.num_workers=0"]
    report_path = tmp_path / "eval.json"
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *voc, "--batch-size", "2", "--output", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["split"] == "val" and report["images"] == 2
    assert report["preprocessing"]["size"] == [64, 80] and report["preprocessing"]["resize"] == "fixed"

    ids = (VOC / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    photos = tmp_path / "val_photos"
    photos.mkdir()
    for sample_id in ids:
        shutil.copy(VOC / "JPEGImages" / f"{sample_id}.jpg", photos)
    out = tmp_path / "predicted"
    assert cli(["predict", "--data", str(photos), "--checkpoint", str(checkpoint), "--batch-size", "2", "--output", str(out)]) == 0
    capsys.readouterr()
    matrix = ConfusionMatrix(21)
    for sample_id in ids:
        predicted = torch.from_numpy(read_mask(out / f"{sample_id}_labels.png")).long()
        truth = torch.from_numpy(read_mask(VOC / "SegmentationClass" / f"{sample_id}.png")).long()
        matrix.update(predicted, truth)
    assert matrix.matrix.tolist() == report["confusion_matrix"]
    assert (matrix.matrix.sum(0) > 0).sum() >= 3  # a real comparison: several classes predicted

    # --original-size feeds each image at its own size: another input, another matrix (same pixels).
    original = tmp_path / "original.json"
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *voc, "--original-size", "--output", str(original), "--no-progress"]) == 0
    at_own_size = json.loads(original.read_text())
    assert at_own_size["preprocessing"]["resize"] == "original" and at_own_size["pixels"] == report["pixels"]
    assert at_own_size["confusion_matrix"] != report["confusion_matrix"]


@pytest.mark.slow
def test_split_selects_any_split_the_preset_defines(checkpoint: Path, tmp_path: Path, capsys) -> None:
    voc = ["data=voc", f"data.root={VOC}", "data.num_workers=0", "--no-progress"]
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *voc, "--split", "train"]) == 0
    report = json.loads((checkpoint.parent / "eval_best_voc_train.json").read_text())
    assert report["split"] == "train" and report["images"] == 2
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *voc, "--split", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["effdetseg evaluate: error: split 'test' is not defined for data=voc (splits: train, val)"]

    # CamVid's SegNet layout has test/ + testannot/ (shared/data leaves it out: make a small one).
    root = tmp_path / "CamVid"
    for split in ("train", "val", "test"):
        source = "val" if split == "test" else split
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for image in sorted((CAMVID / source).glob("*.jpg"))[:2]:
            shutil.copy(image, root / split)
            shutil.copy(CAMVID / f"{source}annot" / f"{image.stem}.png", root / f"{split}annot")
    torch.manual_seed(0)
    camvid_model = create_model("efficientdet_d0_seg", num_classes=11, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    camvid_checkpoint = tmp_path / "camvid.pth"
    save_model(camvid_model, camvid_checkpoint, preprocessing=Preprocessing((64, 96), ResizeMode.fixed))
    output = tmp_path / "test.json"
    assert cli(["evaluate", "--checkpoint", str(camvid_checkpoint), "data=camvid", f"data.root={root}", "data.num_workers=0",
                "--split", "test", "--output", str(output), "--no-progress"]) == 0
    report = json.loads(output.read_text())
    assert report["split"] == "test" and report["images"] == 2 and report["pixels"] > 0
    assert "sky" in capsys.readouterr().out
