"""`effdetseg predict` end to end (the original's flags, --checkpoint, folders, globs, bad input)
and the pictures it writes (effdetseg.pictures.label_maps)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.data import LabelSet, read_mask
from effdetseg.pictures.label_maps import (
    blend,
    color_mask,
    label_image,
    legend,
    overlay,
    present_classes,
    side_by_side,
    with_legend,
)
from conftest import REPO, SHARED_DATA

VOC = SHARED_DATA / "voc2012_sample"
VOC_LABELS = REPO / "src" / "effdetseg" / "assets" / "PascalVOC2012.json"
ERROR_PREFIX = "effdetseg predict: error: "


@pytest.fixture(scope="module")
def voc_images() -> list[Path]:
    images = sorted((VOC / "JPEGImages").glob("*.jpg"))
    if len(images) < 3:
        pytest.skip(f"real sample images missing under {VOC}")
    return images


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A D0 checkpoint with its config, and the same weights as a bare state dict (model.pth)."""
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=21)
    folder = tmp_path_factory.mktemp("weights")
    save_model(model, folder / "d0.safetensors")
    torch.save(model.state_dict(), folder / "model.pth")
    return {"checkpoint": folder / "d0.safetensors", "bare": folder / "model.pth"}


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(ERROR_PREFIX)
    return err[0][len(ERROR_PREFIX) :]


@pytest.mark.slow
def test_original_flags_write_mask_overlay_and_labels(tmp_path: Path, voc_images: list[Path], weights: dict[str, Path]) -> None:
    image = voc_images[0]
    output = tmp_path / "dog_mask.jpg"
    argv = ["predict", "--data", str(image), "--model", "efficientdet_d0_seg", "--resolution", "64",
            "--num_classes", "21", "--labels", str(VOC_LABELS), "--weights", str(weights["bare"]),
            "--output", str(output)]
    assert cli(argv) == 0
    width, height = Image.open(image).size
    mask = Image.open(output)
    assert mask.size == (width, height) and mask.mode == "RGB"
    labels = read_mask(tmp_path / "dog_mask_labels.png")
    assert labels.shape == (height, width) and labels.max() < 21
    # The color mask is the label map painted with the VOC colors (JPEG: nearly).
    expected = color_mask(labels, LabelSet.voc()).astype(int)
    assert np.abs(np.asarray(mask, dtype=int) - expected).mean() < 8
    overlay_image = Image.open(tmp_path / "dog_mask_overlay.jpg")
    assert overlay_image.height == height and overlay_image.width > width  # legend on the right


@pytest.mark.slow
def test_checkpoint_alone_folder_with_a_bad_image(tmp_path: Path, voc_images: list[Path], weights: dict[str, Path], capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in voc_images[:2]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    out = tmp_path / "out"
    code = cli(["predict", "--data", str(folder), "--checkpoint", str(weights["checkpoint"]), "--resolution", "64",
                "--output", str(out), "--overlay", "side", "--batch_size", "2"])
    assert code == 1  # the others are written, the bad one is reported
    err = capsys.readouterr().err
    assert "broken.jpg: not an image" in err and "1 of 3 image(s) could not be read" in err
    for image in voc_images[:2]:
        width, height = Image.open(image).size
        assert Image.open(out / f"{image.stem}_mask.png").size == (width, height)
        assert Image.open(out / f"{image.stem}_labels.png").mode == "P"
        side = Image.open(out / f"{image.stem}_overlay.jpg")
        assert side.height == height and side.width > 2 * width  # image | mask | legend
    assert not (out / "broken_mask.png").exists()


def test_glob_and_checkpoint_default_labels(tmp_path: Path, voc_images: list[Path], weights: dict[str, Path]) -> None:
    out = tmp_path / "out"
    pattern = str(VOC / "JPEGImages" / "2007_*.jpg")
    assert cli(["predict", "--data", pattern, "--checkpoint", str(weights["checkpoint"]), "--resolution", "64",
                "--keep-aspect", "--no-legend", "--output", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*_labels.png"))
    expected = sorted(f"{p.stem}_labels.png" for p in (VOC / "JPEGImages").glob("2007_*.jpg"))
    assert written == expected
    image = VOC / "JPEGImages" / expected[0].replace("_labels.png", ".jpg")
    assert Image.open(out / expected[0].replace("_labels.png", "_overlay.jpg")).size == Image.open(image).size


def test_bad_input_gives_one_error_line(tmp_path: Path, weights: dict[str, Path], voc_images: list[Path], capsys) -> None:
    checkpoint = str(weights["checkpoint"])
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("plain text")
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad_labels = tmp_path / "labels.json"
    bad_labels.write_text(json.dumps({str(i): {"class": f"c{i}"} for i in range(21)}))
    cases = [
        (["--data", str(not_image), "--checkpoint", checkpoint], "photo.jpg: not an image"),
        (["--data", str(empty), "--checkpoint", checkpoint], "folder has no images"),
        (["--data", str(tmp_path / "*.png"), "--checkpoint", checkpoint], "pattern matches no images"),
        (["--data", str(voc_images[0]), "--checkpoint", checkpoint, "--num_classes", "5"],
         "the checkpoint has 21 classes, but num_classes is 5"),
        (["--data", str(voc_images[0]), "--checkpoint", checkpoint, "--labels", str(bad_labels)],
         'class 0 (c0) has no valid "color"'),
        (["--data", str(voc_images[0]), "--checkpoint", checkpoint, "--output", str(blocker / "out")],
         "cannot create output folder"),
        (["--data", str(voc_images[0])], "no model"),
    ]
    for argv, message in cases:
        if "--output" not in argv:
            argv = [*argv, "--output", str(tmp_path / "o")]
        assert cli(["predict", *argv, "--resolution", "64"]) == 2, message
        assert message in one_error_line(capsys)


def test_label_png_keeps_ids_and_colors() -> None:
    labels = np.array([[0, 1, 2], [20, 255, 15]], dtype=np.uint8)
    voc = LabelSet.voc()
    image = label_image(labels, voc)
    assert image.mode == "P"
    assert np.array_equal(np.asarray(image), labels)  # pixel values are the ids
    rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 1]) == voc.colors[1] and tuple(rgb[1, 1]) == voc.ignore_color


def test_color_mask_overlays_and_legend() -> None:
    voc = LabelSet.voc()
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[:, 30:] = 15  # person
    labels[0, 0] = 255
    mask = color_mask(labels, voc)
    assert tuple(mask[5, 40]) == voc.colors[15] and tuple(mask[5, 5]) == voc.colors[0]
    assert tuple(mask[0, 0]) == voc.ignore_color
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    mixed = blend(image, mask, alpha=0.25)
    assert tuple(mixed[5, 40]) == tuple(np.round(0.75 * 200 + 0.25 * np.array(voc.colors[15])).astype(np.uint8))
    assert side_by_side(image, mask).shape == (40, 120, 3)
    assert np.array_equal(overlay(image, mask, "side"), side_by_side(image, mask))
    present = present_classes(labels, voc.num_classes)
    assert [c for c, _ in present] == [15, 0]  # 1200 person pixels, 1199 background, 1 ignored
    assert abs(sum(share for _, share in present) - 1.0) < 1e-9
    panel = legend(voc, [15, 0], height=40)
    assert panel.shape[0] == 40
    assert (panel == np.array(voc.colors[15], dtype=np.uint8)).all(axis=2).any()  # the person swatch
    assert with_legend(mask, voc, [15]).shape[1] > 60
    # More classes than fit one column flow into more columns, still 40 pixels tall.
    assert legend(voc, list(range(21)), height=40).shape[0] == 40
