"""`effdetseg export --int8`: calibration sources, the quantized file, Predictor / predict / benchmark on it,
the agreement threshold and bad --calibration input."""
from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import SHARED_DATA, TINY_D0 as TINY
from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.data import read_image, read_mask
from effdetseg.export.calibration import open_image_source, split_images
from effdetseg.export.formats import export_onnx
from effdetseg.export.quantize_onnx import shape_arithmetic_nodes
from effdetseg.inference.backends import QUANTIZATION_KEY
from effdetseg.inference.predictor import Predictor
from effdetseg.io.record import METADATA_KEY, ModelRecord, Preprocessing

CAMVID = SHARED_DATA / "camvid"
VAL_IMAGE = CAMVID / "val" / "0016E5_07959.jpg"
EXPORT_FLAGS = ["--resolution", "128", "--calibration-images", "4", "--check-images", "2", "--timing-rounds", "1",
                "--threads", "1", "--image", str(VAL_IMAGE)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_camvid_network) -> Path:
    path = tmp_path_factory.mktemp("int8") / "tiny.safetensors"
    save_model(tiny_camvid_network, path)
    return path


@pytest.fixture(scope="module")
def int8_export(checkpoint: Path) -> tuple[Path, str, str, int]:
    """Export through the camvid preset; --min-agreement 101 can never be met, so the command
    must report the agreement and exit 1 after writing both files."""
    import contextlib
    import io

    output = checkpoint.with_name("tiny.onnx")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["export", "--checkpoint", str(checkpoint), "--output", str(output), "--int8",
                    "--calibration", "camvid", "--data-root", str(CAMVID), "--min-agreement", "101", *EXPORT_FLAGS])
    return output, out.getvalue(), err.getvalue(), code


@pytest.mark.slow
def test_export_int8_writes_both_files_and_reports(int8_export: tuple[Path, str, str, int]) -> None:
    output, printed, errors, code = int8_export
    assert code == 1, printed + errors
    assert "below --min-agreement 101" in errors
    assert output.with_name("tiny.fp32.onnx").is_file() and output.is_file()
    assert "calibrating on 4 images of data=camvid train split" in printed
    assert printed.count("argmax agreement 100.000 % ok") == 2  # the fp32 file's parity check
    agreement = float(printed.split("held-out images: ")[1].split(" %")[0])
    assert 90 <= agreement <= 100
    assert "INT8 speed-up over eager PyTorch fp32: " in printed
    for runner in ("eager fp32", "onnxruntime fp32", "onnxruntime int8"):
        assert f"  {runner} " in printed


@pytest.mark.slow
def test_int8_file_is_quantized_and_carries_metadata(int8_export: tuple[Path, str, str, int]) -> None:
    output = int8_export[0]
    proto = onnx.load(output)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["QuantizeLinear"] > 20 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= ops["Conv"] - 2  # every conv but the two upsampling ConvTranspose has int8 weights
    # onnxruntime turns the QDQ pattern into integer kernels.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(output.with_name("optimized.onnx"))
    ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    assert optimized["QLinearConv"] >= ops["Conv"] - 2
    metadata = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(metadata[METADATA_KEY])  # the checkpoint's record, as in the fp32 file
    assert record["preprocessing"]["size"] == [128, 128] and record["architecture"]["backbone"] == TINY["backbone"]
    quantization = json.loads(metadata[QUANTIZATION_KEY])
    assert quantization["recipe"]["method"] == "minmax"
    assert len(quantization["calibration"]["images"]) == 4


@pytest.mark.slow
def test_predictor_runs_int8_and_agrees_with_fp32(int8_export: tuple[Path, str, str, int], checkpoint: Path) -> None:
    quantized = Predictor(int8_export[0], device="cpu")
    assert quantized.backend == "onnxruntime" and quantized.num_classes == 11 and quantized.preprocessing.size == (128, 128)
    image = read_image(VAL_IMAGE)
    expected = Predictor(checkpoint, device="cpu", resolution=128).predict(image)
    classes, counts = np.unique(expected, return_counts=True)
    assert (counts / expected.size >= 0.05).sum() >= 2, "the reference labels one class only: agreement would be trivial"
    actual = quantized.predict(image)
    assert actual.shape == image.shape[:2]
    assert (actual == expected).mean() >= 0.9
    # Other sizes and batches: the quantized graph keeps dynamic shapes.
    other = Predictor(int8_export[0], device="cpu", resolution=(96, 160))
    assert [labels.shape for labels in other.predict([image, image[:200, :300]])] == [image.shape[:2], (200, 300)]


@pytest.mark.slow
def test_predict_and_benchmark_run_the_int8_file(int8_export: tuple[Path, str, str, int], tmp_path: Path, capsys) -> None:
    output = int8_export[0]
    assert cli(["predict", "--backend", "onnx", "--model", str(output), "--data", str(VAL_IMAGE), "--output", str(tmp_path)]) == 0
    labels = read_mask(tmp_path / f"{VAL_IMAGE.stem}_labels.png")
    assert labels.shape == (360, 480) and labels.max() < 11
    capsys.readouterr()
    assert cli(["benchmark", "--onnx", str(output), "--onnx", str(output.with_name("tiny.fp32.onnx")),
                "--resolution", "96", "--iters", "2", "--warmup", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith("  ") and "runner" not in line]
    assert [row[:2] for row in rows] == [["eager", "fp32"], ["onnxruntime", "int8"], ["onnxruntime", "fp32"]]
    assert all(float(row[-2]) > 0 and float(row[-1]) > 0 for row in rows)


@pytest.mark.slow
def test_export_int8_from_a_folder_passes_the_threshold(checkpoint: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((CAMVID / "train").glob("*.jpg"))[:6]:
        shutil.copy(path, folder)
    output = tmp_path / "from_folder.onnx"
    assert cli(["export", "--checkpoint", str(checkpoint), "--output", str(output), "--int8", "--calibration", str(folder),
                "--min-agreement", "50", "--calibration-method", "percentile", *EXPORT_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert f"calibrating on 4 images of folder {folder}" in printed and "percentile" in printed
    assert "on 2 held-out images" in printed


def test_bad_calibration_is_one_error_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "few").mkdir()
    for path in sorted((CAMVID / "train").glob("*.jpg"))[:3]:
        shutil.copy(path, tmp_path / "few")
    output = ["--output", str(tmp_path / "m.onnx"), "--int8"]
    cases = [
        (["--calibration", str(tmp_path / "missing")], "folder not found"),
        (["--calibration", str(tmp_path / "empty")], "no images"),
        (["--calibration", "no_such_preset"], "neither an image folder nor a data preset"),
        (["--calibration", "camvid"], "--data-root"),
        (["--calibration", "camvid", "--data-root", str(tmp_path / "missing")], "data.root"),
        (["--calibration", str(tmp_path / "few"), "--calibration-images", "3"], "at least one more must be held out"),
        ([], "--int8 needs --calibration"),
    ]
    for argv, message in cases:
        assert cli(["export", "--checkpoint", str(checkpoint), *output, *argv]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("effdetseg export: error: ") and message in err[0], err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.fp32.onnx").exists()


def test_calibration_and_held_out_images_are_disjoint_and_spread() -> None:
    source = open_image_source(str(CAMVID / "train"))
    assert source.count == len(list((CAMVID / "train").glob("*.jpg")))
    calibration, held_out = split_images(source.count, 32, 16)
    assert len(calibration) == 32 and len(held_out) == 16 and not set(calibration) & set(held_out)
    assert calibration[0] == 0 and calibration[-1] == source.count - 1  # over the whole sequence
    assert max(held_out) > source.count * 0.9
    assert source.load(calibration[1]).shape == (360, 480, 3)


def test_shape_arithmetic_stays_out_of_quantization(tmp_path: Path) -> None:
    """The pad-to-128 / crop size computations are found, and no convolution is among them."""
    model = create_model("efficientdet_d0_seg", num_classes=3, **TINY).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, ModelRecord.for_model(model, preprocessing=Preprocessing((64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)))
    proto = onnx.load(path)
    kinds = {node.name: node.op_type for node in proto.graph.node}
    shape_nodes = shape_arithmetic_nodes(proto)
    assert {kinds[name] for name in shape_nodes} >= {"Shape", "Gather"}
    assert not {"Conv", "ConvTranspose", "Resize", "Pad"} & {kinds[name] for name in shape_nodes}
    producer = {output: node.name for node in proto.graph.node for output in node.output}
    assert producer[proto.graph.output[0].name] not in shape_nodes  # the crop of the logits reads activations


def test_the_export_says_when_int8_does_not_pay() -> None:
    from effdetseg.commands.export import int8_speed_lines
    from effdetseg.inference.timing import Timing

    def timings(eager: float, fp32: float, int8: float) -> dict[str, Timing]:
        return {name: Timing(name, ms, (ms,)) for name, ms in
                (("eager fp32", eager), ("openvino fp32", fp32), ("openvino int8", int8))}

    lines = int8_speed_lines(timings(20.0, 10.0, 8.0), "openvino", "1×3×512×512")
    assert lines == ["INT8 speed-up over eager PyTorch fp32: 2.50×; over openvino fp32: 1.25×"]
    # The default model's record predicts at 128²: INT8's fixed costs dominate there.
    lines = int8_speed_lines(timings(10.0, 8.0, 14.5), "openvino", "1×3×128×128")
    assert len(lines) == 2 and lines[0].startswith("INT8 speed-up over eager PyTorch fp32: 0.69×")
    assert lines[1] == ("warning: on this machine at 1×3×128×128 the INT8 model (14.5 ms) is slower than eager PyTorch fp32 "
                        "(10.0 ms) and openvino fp32 (8.0 ms); predict with the faster one unless the smaller file matters")
