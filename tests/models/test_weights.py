"""Weight loading (timm and EfficientNet-PyTorch naming), checkpoints that rebuild their model, classify."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import effdetseg
from effdetseg.io.build import load_model
from effdetseg.io.model_files import read_record, save_model
from effdetseg.cli import main as cli
from effdetseg.errors import EffdetsegError
from effdetseg.models.weights import WeightsError, convert_lukemelas_to_timm, read_state_dict


def test_lukemelas_naming_converts_by_name(lite0_weights: Path) -> None:
    source = read_state_dict(lite0_weights)
    model = timm.create_model("tf_efficientnet_lite0")
    converted = convert_lukemelas_to_timm(source, model)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    # Spot checks of the table: the first block has no expansion conv, the second has one.
    torch.testing.assert_close(converted["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    torch.testing.assert_close(converted["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    torch.testing.assert_close(converted["blocks.1.0.bn3.running_var"], source["_blocks.1._bn2.running_var"])
    torch.testing.assert_close(converted["classifier.weight"], source["_fc.weight"])


def test_seg_backbone_takes_lukemelas_weights(lite0_weights: Path) -> None:
    model = effdetseg.create_model(
        "efficientdet_d0_seg", num_classes=21, backbone="tf_efficientnet_lite0", backbone_pretrained=lite0_weights
    )
    source = read_state_dict(lite0_weights)
    torch.testing.assert_close(model.backbone.body.conv_stem.weight, source["_conv_stem.weight"])
    torch.testing.assert_close(model.backbone.body.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])
    # The weights path is not part of the architecture: the config rebuilds the same network.
    assert model.model_config == {"name": "efficientdet_d0_seg", "num_classes": 21, "backbone": "tf_efficientnet_lite0"}


def test_seg_backbone_takes_timm_naming(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = timm.create_model("efficientnet_b0")
    path = tmp_path / "b0_timm.pth"
    torch.save(classifier.state_dict(), path)
    model = effdetseg.create_model("efficientdet_d0_seg", backbone_pretrained=path)
    torch.testing.assert_close(model.backbone.body.blocks[3][1].conv_dw.weight, classifier.blocks[3][1].conv_dw.weight)
    torch.testing.assert_close(model.backbone.body.bn1.running_mean, classifier.bn1.running_mean)


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path, lite0_weights: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "_mystery.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match=r"_mystery\.weight"):
        effdetseg.create_model("efficientdet_d0_seg", backbone="tf_efficientnet_lite0", backbone_pretrained=bad)
    # Real weights for another architecture: the error lists what is missing or misshapen.
    with pytest.raises(WeightsError, match=r"bad|mismatch|missing"):
        effdetseg.create_model("efficientdet_d0_seg", backbone="efficientnet_b0", backbone_pretrained=lite0_weights)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": object()}, pickled)  # not a plain state dict: weights_only refuses to unpickle it
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        effdetseg.create_model("efficientdet_d0_seg", backbone_pretrained=pickled)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip_rebuilds_the_model(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = effdetseg.create_model("efficientdet_d0_seg_p2", num_classes=4, bifpn_channels=24).eval()
    path = tmp_path / f"model{suffix}"
    save_model(model, path)
    assert read_record(path).architecture.config() == {"name": "efficientdet_d0_seg_p2", "num_classes": 4, "bifpn_channels": 24}
    restored = load_model(path)
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed, not left behind"


@pytest.mark.slow
def test_wrong_checkpoint_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "five.pth"
    save_model(effdetseg.create_model("efficientdet_d0_seg", num_classes=5), path)
    with pytest.raises(EffdetsegError, match="5 classes, the model 21"):
        load_model(path, num_classes=21)
    bare = tmp_path / "bare.pth"
    torch.save(effdetseg.create_model("efficientdet_d0_seg", num_classes=5).state_dict(), bare)
    with pytest.raises(EffdetsegError, match="no model config"):
        load_model(bare)
    with pytest.raises(EffdetsegError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_classify_real_imagenet_weights(shared_data: Path, lite0_weights: Path, capsys: pytest.CaptureFixture) -> None:
    image = shared_data / "voc2012_sample" / "JPEGImages" / "2007_000033.jpg"
    args = ["classify", "--data", str(image), "--model", "tf_efficientnet_lite0", "--resolution", "224"]
    assert cli(args + ["--weights", str(lite0_weights)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    probabilities = [float(line.split()[0]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True)
    assert lines[0].split(maxsplit=1)[1] == "airliner" and probabilities[0] > 0.5


def test_classify_bad_image_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    assert cli(["classify", "--data", str(not_image), "--model", "efficientnet_b0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.jpg" in err[0] and "not an image" in err[0]
