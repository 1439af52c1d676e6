"""VOC 2012 and VOC-aug on the real sample, augmentation from config, SBD conversion, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from omegaconf import OmegaConf
from PIL import Image

from effdetseg.data import build_dataset, build_label_set, read_mask
from effdetseg.configs.compose import compose
from effdetseg.data.transforms import build_transform
from effdetseg.errors import EffdetsegError
from conftest import SHARED_DATA

VOC = SHARED_DATA / "voc2012_sample"
LISTS = SHARED_DATA / "voc2012_lists"
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"real VOC sample data missing at {VOC}")


def voc_cfg(root: Path | str = VOC, *overrides: str, preset: str = "voc"):
    return compose([f"data={preset}", f"data.root={root}", *overrides]).data


def make_voc_root(tmp: Path, samples: dict[str, tuple[np.ndarray, np.ndarray | None]], train: list[str], val: list[str]) -> Path:
    """A VOC-layout directory with the given (image, mask) arrays and split lists."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for sample_id, (image, mask) in samples.items():
        Image.fromarray(image).save(tmp / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        if mask is not None:
            Image.fromarray(mask, mode="L").save(tmp / "SegmentationClass" / f"{sample_id}.png")
    (tmp / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (tmp / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    return tmp


def test_voc_sample_loads_with_palette_indices_and_original_val_size():
    cfg = voc_cfg()
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 2 and len(val) == 2
    assert [s.id for s in val.samples] == (VOC / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in range(len(val)):
        item = val[i]
        original = Image.open(VOC / "JPEGImages" / f"{item['id']}.jpg")
        assert item["image"].shape == (3, original.height, original.width)  # no resize for evaluation
        raw = read_mask(VOC / "SegmentationClass" / f"{item['id']}.png")
        assert torch.equal(item["mask"], torch.from_numpy(raw).long())  # 255 kept, palette indices
        assert 255 in raw and raw[raw != 255].max() <= 20
        # Only normalization: undoing it gives back the decoded JPEG.
        rgb = np.asarray(original.convert("RGB"), np.float64)
        restored = item["image"].permute(1, 2, 0).numpy() * STD + MEAN
        assert np.abs(restored * 255 - rgb).max() < 0.51
    item = train[0]
    assert item["image"].shape == (3, 512, 512) and item["mask"].shape == (512, 512)
    assert build_label_set(cfg).names[15] == "person" and build_label_set(cfg).num_classes == 21


def test_voc_training_pipeline_is_the_original_list_with_nearest_masks_and_ignore_border(tmp_path):
    cfg = voc_cfg(tmp_path, "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64")
    names = [spec["_target_"].split(".")[-1] for spec in cfg.augmentation.train]
    assert names == ["Resize", "HorizontalFlip", "RGBShift", "RandomBrightnessContrast", "Affine"]
    detached = OmegaConf.create(OmegaConf.to_container(cfg))  # interpolations are relative to the data node
    transform = build_transform(detached, augment=True)
    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    mask = np.full((80, 100), 7, np.uint8)
    seen = set()
    border_filled = 0
    for _ in range(25):
        image_t, mask_t = transform(image, mask)
        assert image_t.shape == (3, 64, 64) and mask_t.shape == (64, 64) and mask_t.dtype == torch.int64
        values = set(torch.unique(mask_t).tolist())
        seen |= values
        border_filled += 255 in values
    assert seen == {7, 255}  # nearest neighbour: no blended labels; the Affine border is ignore, not 0
    assert border_filled >= 5  # Affine (p=0.6, rotate ±45°) brings in border on most draws


def test_deeplab_preset_scales_crops_and_pads_with_ignore(tmp_path):
    cfg = voc_cfg(tmp_path, "data/augmentation=deeplab", "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64")
    transform = build_transform(cfg, augment=True)
    image = np.full((20, 24, 3), 200, np.uint8)  # smaller than the crop even at scale 2: always padded
    mask = np.full((20, 24), 3, np.uint8)
    image_t, mask_t = transform(image, mask)
    assert image_t.shape == (3, 64, 64) and set(torch.unique(mask_t).tolist()) == {3, 255}
    padded = mask_t == 255
    expected_pad = torch.tensor(-MEAN / STD, dtype=torch.float32)[:, None]
    assert torch.allclose(image_t[:, padded], expected_pad, atol=1e-4)  # image padded with 0 (black)
    labelled = int((mask_t == 3).sum())
    assert 0.5**2 * 480 - 60 <= labelled <= 2.0**2 * 480 + 200  # the object area scaled by 0.5…2.0


def test_bad_input_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    good = np.zeros((40, 50), np.uint8)
    bad_values = good.copy()
    bad_values[:3, :3] = 30
    bad_values[5, 5] = 21
    root = make_voc_root(
        tmp_path,
        {
            "good": (image, good),
            "badvalues": (image, bad_values),
            "mismatch": (image, np.zeros((41, 50), np.uint8)),
            "truncated": (image, good),
            "nomask": (image, None),
        },
        train=["good", "badvalues", "mismatch", "truncated"],
        val=["good", "nomask"],
    )
    jpg = root / "JPEGImages" / "truncated.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])

    train = build_dataset(voc_cfg(root, "data/augmentation=none"), "train")
    assert train[0]["mask"].shape == (40, 50)
    with pytest.raises(EffdetsegError, match=r"badvalues\.png: label values \[21, 30\]"):
        train[1]
    with pytest.raises(EffdetsegError, match=r"mismatch\.png: mask is 50×41 but image mismatch\.jpg is 50×40"):
        train[2]
    with pytest.raises(EffdetsegError, match=r"truncated\.jpg: unreadable or truncated"):
        train[3]
    with pytest.raises(EffdetsegError, match="no mask for id nomask"):
        build_dataset(voc_cfg(root), "val")
    with pytest.raises(EffdetsegError, match="data.root"):
        build_dataset(voc_cfg(tmp_path / "missing"), "train")
    with pytest.raises(EffdetsegError, match="data.root is not set"):
        build_dataset(compose(["data=voc"]).data, "train")


def test_grayscale_rgba_16bit_and_exif_rotated_images_are_converted(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    root = make_voc_root(tmp_path, {}, train=["gray", "rgba", "deep"], val=["exif"])
    Image.fromarray(np.full((30, 40), 90, np.uint8), mode="L").save(root / "JPEGImages" / "gray.png")
    Image.fromarray(np.full((30, 40, 4), 90, np.uint8), mode="RGBA").save(root / "JPEGImages" / "rgba.png")
    Image.fromarray(np.full((30, 40), 90 * 257, np.uint16)).save(root / "JPEGImages" / "deep.png")
    for sample_id in ("gray", "rgba", "deep"):
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{sample_id}.png")
    ds = build_dataset(voc_cfg(root, "data/augmentation=none"), "train")
    for i in range(3):
        restored = ds[i]["image"].permute(1, 2, 0).numpy() * STD + MEAN
        assert ds[i]["image"].shape == (3, 30, 40) and np.allclose(restored * 255, 90, atol=0.6), ds[i]["id"]
    # Stored 40 wide × 30 high with EXIF orientation 6 (rotate 90°): it is 30 wide × 40 high upright,
    # so it pairs with a 30×40 (W×H) mask; left half red, upright the red half is on top.
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "JPEGImages" / "exif.jpg", exif=exif, quality=95)
    Image.fromarray(np.zeros((40, 30), np.uint8), mode="L").save(root / "SegmentationClass" / "exif.png")
    item = build_dataset(voc_cfg(root), "val")[0]
    assert item["image"].shape == (3, 40, 30) and item["mask"].shape == (40, 30)
    red = item["image"][0] * STD[0] + MEAN[0]
    assert red[:15].mean() > 0.9 and red[25:].mean() < 0.1


def test_real_voc_aug_lists_are_disjoint_and_a_missing_id_fails_loudly():
    train_aug = (LISTS / "train_aug.txt").read_text().split()
    val = (LISTS / "val.txt").read_text().split()
    assert len(train_aug) == 10582 and len(val) == 1449 and not set(train_aug) & set(val)
    cfg = voc_cfg(VOC, f"data.splits.train.list={LISTS / 'train_aug.txt'}", "data.splits.train.masks=SegmentationClass", preset="voc_aug")
    assert cfg.splits.val.masks == "SegmentationClass"
    with pytest.raises(EffdetsegError, match=r"no image for id 2007_000039"):
        build_dataset(cfg, "train")


def _save_sbd_mat(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gtcls = {"Segmentation": mask, "Boundaries": np.zeros(1), "CategoriesPresent": np.unique(mask[mask > 0])}
    scipy.io.savemat(path, {"GTcls": gtcls})


def test_voc_aug_builds_segmentation_class_aug_from_sbd(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    voc_mask = np.zeros((30, 40), np.uint8)
    voc_mask[5:10, 5:10] = 15
    voc_mask[4, 4:11] = 255
    root = make_voc_root(
        tmp_path / "VOC2012",
        {"a": (image, voc_mask), "b": (image, None), "c": (image, None), "v": (image, voc_mask)},
        train=["a"],
        val=["v"],
    )
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("a\nb\nc\n")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    mask_b = np.zeros((30, 40), np.uint8)
    mask_b[10:20, 10:30] = 12
    mask_c = np.full((30, 40), 3, np.uint8)
    _save_sbd_mat(sbd / "cls" / "b.mat", mask_b)
    _save_sbd_mat(sbd / "cls" / "c.mat", mask_c)
    _save_sbd_mat(sbd / "cls" / "a.mat", np.ones((30, 40), np.uint8))  # VOC's own mask wins for a

    cfg = voc_cfg(root, f"data.sbd_root={sbd}", preset="voc_aug")
    train = build_dataset(cfg, "train")
    assert [s.id for s in train.samples] == ["a", "b", "c"]
    aug = root / "SegmentationClassAug"
    assert np.array_equal(read_mask(aug / "a.png"), voc_mask)
    assert np.array_equal(read_mask(aug / "b.png"), mask_b)
    assert np.array_equal(read_mask(aug / "c.png"), mask_c)
    assert len(build_dataset(cfg, "val")) == 1

    (root / "ImageSets/Segmentation/train_aug.txt").write_text("a\nb\nc\nd\n")
    (root / "JPEGImages" / "d.jpg").write_bytes((root / "JPEGImages" / "a.jpg").read_bytes())
    with pytest.raises(EffdetsegError, match=r"no mask for 1 train_aug id\(s\).*\['d'\]"):
        build_dataset(cfg, "train")
    _save_sbd_mat(sbd / "cls" / "d.mat", np.full((30, 40), 40, np.uint8))
    with pytest.raises(EffdetsegError, match=r"d\.mat: label values \[40\]"):
        build_dataset(cfg, "train")
