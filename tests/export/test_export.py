"""BatchNorm folding, `effdetseg export` (ONNX and TorchScript, dynamic shapes, parity check) and
`effdetseg predict --backend onnx`."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import effdetseg.inference.prepare
from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.data import read_mask
from effdetseg.inference.onnx_graph import export_program
from effdetseg.inference.predictor import Predictor
from effdetseg.inference.prepare import fold_batchnorm
from effdetseg.io.record import METADATA_KEY
from conftest import SHARED_DATA

IMAGE = SHARED_DATA / "voc2012_sample" / "JPEGImages" / "2007_000033.jpg"


def randomize_batchnorm(model: nn.Module) -> None:
    """Trained-looking BN statistics: with the defaults (mean 0, var 1) folding is nearly a no-op."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not IMAGE.is_file():
        pytest.skip(f"real sample image missing: {IMAGE}")
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=21).eval()
    randomize_batchnorm(model)
    path = tmp_path_factory.mktemp("export") / "d0.pth"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(checkpoint: Path) -> Path:
    """D0's topology on a small timm backbone with narrow layers: for the slower TorchScript checks."""
    model = create_model("efficientdet_d0_seg", num_classes=5, backbone="mobilenetv3_small_050", bifpn_layers=1,
                         bifpn_channels=16, head_channels=16, head_layers=1).eval()
    randomize_batchnorm(model)
    path = checkpoint.with_name("tiny.safetensors")
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def onnx_export(checkpoint: Path) -> tuple[Path, str]:
    """The exported file and what the command printed."""
    output = checkpoint.with_name("d0.onnx")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["export", "--checkpoint", str(checkpoint), "--output", str(output), "--image", str(IMAGE),
                    "--resolution", "96"])
    assert code == 0, printed.getvalue()
    return output, printed.getvalue()


@pytest.fixture(scope="module")
def onnx_file(onnx_export: tuple[Path, str]) -> Path:
    return onnx_export[0]


def test_fold_batchnorm_folds_every_bn_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg_p2", num_classes=3, backbone="mobilenetv3_small_050",
                         bifpn_channels=16, head_channels=16).eval()
    randomize_batchnorm(model)
    total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, report = fold_batchnorm(model)
    assert len(report.folded) == total and report.unfolded == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # The BiFPN nodes fold into the pointwise conv of their separable conv.
    assert ("bifpn.0.nodes.0.conv.pointwise", "bifpn.0.nodes.0.bn") in report.folded
    assert "backbone" in report.summary() and "head 3/3" in report.summary()
    x = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert expected.abs().max() > 0.1  # a non-trivial output to compare
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # The original is untouched.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == total


@pytest.mark.slow
def test_onnx_export_is_dynamic_and_matches_pytorch(onnx_export: tuple[Path, str], checkpoint: Path) -> None:
    onnx_file, printed = onnx_export
    assert "folded 84/84 BatchNorm layers" in printed
    assert printed.count("argmax agreement 100.000 % ok") == 2  # two input sizes, both exact
    proto = onnx.load(onnx_file)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, 3, H, W
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert metadata["architecture"]["name"] == "efficientdet_d0_seg" and metadata["preprocessing"]["size"] == [96, 96]
    # Two sizes and batch sizes through onnxruntime, neither a multiple of the network's 128.
    model = Predictor(checkpoint, device="cpu").model
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 96, 136), (3, 3, 70, 50)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(None, {"images": x.numpy()})
        assert actual.shape == (shape[0], 21, *shape[2:])
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_predict_with_onnx_backend_matches_torch(onnx_file: Path, checkpoint: Path, tmp_path: Path) -> None:
    assert cli(["predict", "--data", str(IMAGE), "--backend", "onnx", "--model", str(onnx_file),
                "--output", str(tmp_path / "onnx")]) == 0
    assert cli(["predict", "--data", str(IMAGE), "--checkpoint", str(checkpoint), "--resolution", "96",
                "--output", str(tmp_path / "torch")]) == 0
    from_onnx = read_mask(tmp_path / "onnx" / f"{IMAGE.stem}_labels.png")
    from_torch = read_mask(tmp_path / "torch" / f"{IMAGE.stem}_labels.png")
    assert from_onnx.shape == Image.open(IMAGE).size[::-1]
    assert (from_onnx == from_torch).mean() >= 0.999


@pytest.mark.slow
def test_torchscript_export(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "tiny.torchscript.pt"
    assert cli(["export", "--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--output", str(output),
                "--image", str(IMAGE), "--resolution", "64"]) == 0
    printed = capsys.readouterr().out
    assert "folded 58/58 BatchNorm layers" in printed and printed.count("% ok") == 2
    exported = Predictor(output, device="cpu")
    assert exported.backend == "torchscript" and exported.preprocessing.size == (64, 64)
    labels = exported.predict(str(IMAGE))
    assert labels.shape == Image.open(IMAGE).size[::-1]
    reference = Predictor(tiny_checkpoint, device="cpu", resolution=64).predict(str(IMAGE))
    assert (labels == reference).mean() >= 0.999


@pytest.mark.slow
def test_parity_failure_exits_nonzero(tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A graph that disagrees with PyTorch must fail the command: the exported classifier's outputs
    are rotated by one class, so every pixel's argmax moves to the next class."""
    real_fold = effdetseg.inference.prepare.fold_batchnorm

    def broken_fold(model: nn.Module):
        folded, report = real_fold(model)
        classifier = folded.head.classifier
        with torch.no_grad():
            classifier.weight.copy_(classifier.weight.roll(1, dims=0))
            classifier.bias.copy_(classifier.bias.roll(1, dims=0))
        return folded, report

    monkeypatch.setattr(effdetseg.inference.prepare, "fold_batchnorm", broken_fold)
    output = tmp_path / "broken.onnx"
    assert cli(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(output), "--image", str(IMAGE),
                "--resolution", "64"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("argmax agreement 0.000 % FAILED") == 2
    assert "parity check failed" in captured.err


def test_export_bad_input(checkpoint: Path, tmp_path: Path, capsys) -> None:
    onnx_out = ["--output", str(tmp_path / "m.onnx")]
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pth"), *onnx_out, "--image", str(IMAGE)], "model file not found"),
        (["--checkpoint", str(checkpoint), *onnx_out, "--image", str(tmp_path / "none.jpg")], "none.jpg: image not found"),
        (["--checkpoint", str(checkpoint), "--output", str(tmp_path / "model.xyz")], "cannot tell the format"),
        (["--checkpoint", str(checkpoint), *onnx_out, "--num_classes", "3", "--image", str(IMAGE)],
         "21 classes, but num_classes is 3"),
        (["--checkpoint", str(checkpoint), "--output", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert cli(["export", *argv]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("effdetseg export: error: ") and message in err[0], err


@pytest.mark.slow
def test_torch_export_program_runs_at_other_sizes() -> None:
    """One export with dynamic batch, height and width; the program matches eager at three other sizes."""
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=5).eval()
    randomize_batchnorm(model)
    program = export_program(model).module()
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (1, 3, 129, 257), (3, 3, 200, 96)]:
            x = torch.randn(*shape)
            expected = model(x)
            got = program(x)
            assert got.shape == expected.shape == (shape[0], 5, *shape[2:])
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
