"""The OpenVINO backend and the backend switch: `export --format openvino` (IR folder, record, parity),
Predictor / predict / evaluate with --backend, NNCF INT8 with calibration on real images (a non-image
file skipped and named), the `benchmark --backends` table, and one line when OpenVINO is missing.

OpenVINO itself runs only in subprocesses (``run_command``, ``run_python``): the whole suite in one
pytest process that had loaded OpenVINO died with a segmentation fault outside Python, many tests
later (in tests/training/test_resume.py); a user's command starts afresh, and so does each check here."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, TINY_D0 as TINY
from effdetseg import save_model
from effdetseg.cli import main as cli
from effdetseg.data import read_image, read_mask
from effdetseg.errors import EffdetsegError
from effdetseg.inference.backends import detect_format, resolve_backend
from effdetseg.inference.predictor import Predictor
from effdetseg.io.record import Preprocessing, ResizeMode

if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
    pytest.skip("the OpenVINO backend is the optional extra effdetseg[openvino]", allow_module_level=True)

CAMVID = SHARED_DATA / "camvid"
VAL_IMAGE = CAMVID / "val" / "0016E5_07959.jpg"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(argv)
    return code, out.getvalue(), err.getvalue()


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """``effdetseg ARGV`` in a fresh process: OpenVINO, ONNX Runtime and torch thread pools that
    many earlier tests set up in one process have crashed it there; a user's command starts afresh."""
    proc = subprocess.run([sys.executable, "-m", "effdetseg", *argv], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def run_python(code: str, **values: object) -> dict:
    """Run ``code`` in a fresh Python process with ``values`` (JSON) bound to ``args``; it prints one
    JSON object as its last line, returned here."""
    script = "import json, sys\nargs = json.loads(sys.argv[1])\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(values, default=str)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


INSPECT_IR = """
import openvino as ov
model = ov.Core().read_model(args["xml"])
fake_quantize = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
info = {key: json.loads(model.get_rt_info([key]).astype(str)) for key in ("effdetseg_record", "effdetseg_quantization")
        if model.has_rt_info([key])}
print(json.dumps({
    "dynamic": model.inputs[0].get_partial_shape().is_dynamic,
    "fake_quantize": len(fake_quantize),
    "quantized_inputs": sorted({t.get_node().get_friendly_name() for op in fake_quantize for t in op.output(0).get_target_inputs()}),
    # what feeds each depthwise convolution's weights: a Constant (fp32), or the int8 constant's dequantizing
    # Multiply (packed by NNCF), or a FakeQuantize (left as a float op: the convolution cannot run in int8)
    "depthwise_weights": sorted({op.input_value(1).get_node().get_type_name() for op in model.get_ordered_ops()
                                 if op.get_type_name() == "GroupConvolution"}),
    # swish written as x * sigmoid(x) (as ONNX spells it) rather than one Swish op
    "swish_as_multiply": sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "Multiply" and any(
        v.get_node().get_type_name() == "Sigmoid" and v.get_node().input_value(0) == op.input_value(1 - i)
        for i, v in enumerate(op.input_values()))),
    "swish_ops": sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "Swish"),
    **info,
}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_camvid_network) -> Path:
    path = tmp_path_factory.mktemp("openvino") / "tiny.safetensors"
    save_model(tiny_camvid_network, path, preprocessing=Preprocessing(size=(128, 128), resize=ResizeMode.fixed))
    return path


@pytest.fixture(scope="module")
def ir_folder(checkpoint: Path) -> tuple[Path, str]:
    output = checkpoint.with_name("tiny-ir")
    code, printed, errors = run_command(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(output),
                                         "--device", "cpu", "--image", str(VAL_IMAGE)])
    assert code == 0, printed + errors
    return output, printed


def test_export_writes_an_ir_folder_with_the_record(ir_folder: tuple[Path, str], checkpoint: Path) -> None:
    folder, printed = ir_folder
    assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin"}
    assert printed.count("argmax agreement 100.000 % ok") == 2  # the parity check at two sizes and batches
    assert detect_format(folder) == "openvino" and detect_format(folder / "model.xml") == "openvino"
    ir = run_python(INSPECT_IR, xml=folder / "model.xml")
    assert ir["dynamic"]  # batch, height and width
    record = ir["effdetseg_record"]
    assert record["architecture"]["backbone"] == TINY["backbone"] and record["preprocessing"]["size"] == [128, 128]


def test_every_backend_predicts_what_eager_predicts(ir_folder: tuple[Path, str], checkpoint: Path) -> None:
    result = run_python("""
        import numpy as np
        from effdetseg.data import read_image
        from effdetseg.inference.predictor import Predictor
        image = read_image(args["image"])
        eager = Predictor(args["checkpoint"], device="cpu")
        expected = eager.predict(image)
        runs = {
            "folder": Predictor(args["folder"], device="cpu"),
            "xml": Predictor(args["folder"] + "/model.xml", device="cpu"),
            "checkpoint openvino": Predictor(args["checkpoint"], device="cpu", backend="openvino"),
            "checkpoint onnxruntime": Predictor(args["checkpoint"], device="cpu", backend="onnxruntime"),
            "checkpoint auto": Predictor(args["checkpoint"], device="cpu", backend="auto"),
        }
        report = {"classes_in_reference": len(np.unique(expected)), "runs": {}}
        for name, predictor in runs.items():
            report["runs"][name] = {
                "model_is_none": predictor.model is None, "num_classes": predictor.num_classes,
                "same_preprocessing": predictor.preprocessing == eager.preprocessing,
                "agreement": float((predictor.predict(image) == expected).mean()),
                "backend": predictor.backend, "note": predictor.backend_note,
            }
        other = Predictor(args["folder"], device="cpu", resolution=(96, 160))
        report["shapes"] = [list(m.shape) for m in other.predict([image, image[:200, :300]])]
        report["image_shape"] = list(image.shape[:2])
        print(json.dumps(report))
    """, image=VAL_IMAGE, checkpoint=checkpoint, folder=ir_folder[0])
    assert result["classes_in_reference"] >= 2, "the reference labels one class only: agreement would be trivial"
    runs = result["runs"]
    for name, run in runs.items():
        assert run["model_is_none"] and run["num_classes"] == 11 and run["same_preprocessing"], name
        assert run["agreement"] >= 0.999, name
    assert runs["folder"]["backend"] == "openvino" and runs["checkpoint onnxruntime"]["backend"] == "onnxruntime"
    # auto measured eager, ONNX Runtime and OpenVINO on the first input and runs the fastest
    note = runs["checkpoint auto"]["note"]
    assert runs["checkpoint auto"]["backend"] in ("torch", "onnxruntime", "openvino") and "auto: fastest measured" in note
    assert all(f"{b} " in note for b in ("torch", "onnxruntime", "openvino")), note
    # dynamic shapes: other sizes and a batch of two
    assert result["shapes"] == [result["image_shape"], [200, 300]]


def test_backend_choice_rules() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend(None, "onnx", cpu).backend == "onnxruntime"
    assert resolve_backend("onnx", "torch", cpu).backend == "onnxruntime"  # the old name still works
    assert resolve_backend("eager", "torch", cpu).backend == "torch"
    assert resolve_backend("openvino", "onnx", cpu).backend == "openvino"  # OpenVINO reads ONNX files too
    assert resolve_backend("auto", "torchscript", cpu).backend == "torchscript"
    for requested, file_format, message in (("openvino", "torchscript", "runs in torchscript"),
                                            ("onnxruntime", "openvino", "runs in openvino"),
                                            ("tensorrt", "torch", "--backend must be one of")):
        with pytest.raises(EffdetsegError, match=message):
            resolve_backend(requested, file_format, cpu)


@pytest.mark.slow
def test_predict_and_evaluate_with_the_openvino_backend(ir_folder: tuple[Path, str], checkpoint: Path, tmp_path: Path) -> None:
    """predict writes the same labels through every backend, and evaluate scores what predict writes."""
    for name, argv in {"torch": ["--checkpoint", str(checkpoint)],
                       "ir": ["--checkpoint", str(ir_folder[0])],
                       "auto": ["--checkpoint", str(checkpoint), "--backend", "auto"]}.items():
        code, printed, errors = run_command(["predict", "--data", str(VAL_IMAGE), *argv, "--output", str(tmp_path / name)])
        assert code == 0, errors
    # measured here, or (after an earlier test's Predictor on this file) remembered beside the checkpoint
    assert ("(auto: fastest measured on the CPU for input 1×3×128×128" in printed
            or "(auto: measured fastest on this machine for input 1×3×128×128, as tiny.safetensors.auto-backend.json" in printed)
    labels = {name: read_mask(tmp_path / name / f"{VAL_IMAGE.stem}_labels.png") for name in ("torch", "ir", "auto")}
    assert (labels["ir"] == labels["torch"]).mean() >= 0.999 and (labels["auto"] == labels["torch"]).mean() >= 0.999
    reports = {}
    for name, argv in {"torch": ["--checkpoint", str(checkpoint)],
                       "openvino": ["--checkpoint", str(checkpoint), "--backend", "openvino"],
                       "ir": ["--checkpoint", str(ir_folder[0])]}.items():
        output = tmp_path / f"eval_{name}.json"
        code, printed, errors = run_command(["evaluate", *argv, "data=camvid", f"data.root={CAMVID}", "--no-progress",
                                         "--output", str(output)])
        assert code == 0, errors
        reports[name] = json.loads(output.read_text())
    assert reports["openvino"]["backend"] == reports["ir"]["backend"] == "openvino" and reports["torch"]["backend"] == "torch"
    assert reports["openvino"]["miou"] == pytest.approx(reports["torch"]["miou"], abs=1e-3)
    assert reports["ir"]["miou"] == pytest.approx(reports["torch"]["miou"], abs=1e-3)


@pytest.mark.slow
def test_int8_by_nncf_calibrates_on_real_images_and_names_a_non_image(checkpoint: Path, tmp_path: Path) -> None:
    images = tmp_path / "calibration"
    images.mkdir()
    for path in sorted((CAMVID / "val").glob("*.jpg"))[:7]:
        shutil.copy(path, images / path.name)
    (images / "x.jpg").write_text("not an image")
    output = tmp_path / "int8"
    code, printed, errors = run_command([
        "export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(output), "--int8",
        "--calibration", str(images), "--calibration-images", "4", "--check-images", "2", "--timing-rounds", "1",
        "--threads", "1", "--min-agreement", "50", "--device", "cpu",
    ])
    assert code == 0, printed + errors
    assert "--calibration: skipped x.jpg: not an image (unrecognised format)" in printed
    assert "calibrating on 4 images of folder" in printed and "NNCF performance, fp32: stem, classifier, upsampler" in printed
    assert (output / "model.xml").is_file() and (tmp_path / "int8.fp32" / "model.xml").is_file()
    for runner in ("eager fp32", "openvino fp32", "openvino int8"):
        assert f"  {runner} " in printed
    ir = run_python(INSPECT_IR, xml=output / "model.xml")
    assert ir["fake_quantize"] > 20
    # the sensitive layers stay in fp32: nothing quantizes the stem's, the classifier's or the upsampler's input
    assert not any(part in name for name in ir["quantized_inputs"] for part in ("/conv_stem/", "/head/classifier/", "/upsample/"))
    assert any("/fuse/" in name for name in ir["quantized_inputs"])  # the rest is quantized, the fusions too
    # the depthwise convolutions' weights are int8 constants per channel, not fake-quantized floats (with their
    # weights behind the ONNX import's Reshape, NNCF quantized them per kernel column and they all ran in fp32)
    assert ir["depthwise_weights"] == ["Multiply"]
    # and swish is one op, which OpenVINO fuses into the int8 convolution before it (the fp32 IR still spells it out)
    spelled_out = run_python(INSPECT_IR, xml=tmp_path / "int8.fp32" / "model.xml")["swish_as_multiply"]
    assert spelled_out > 0 and ir["swish_ops"] == spelled_out and ir["swish_as_multiply"] == 0
    quantization = ir["effdetseg_quantization"]
    assert len(quantization["calibration"]["images"]) == 4 and "x.jpg" not in quantization["calibration"]["images"]
    loaded = run_python("""
        from effdetseg.data import read_image
        from effdetseg.inference.predictor import Predictor
        predictor = Predictor(args["folder"], device="cpu")
        print(json.dumps({"backend": predictor.backend, "size": list(predictor.preprocessing.size),
                          "shape": list(predictor.predict(read_image(args["image"])).shape)}))
    """, folder=output, image=VAL_IMAGE)
    assert loaded == {"backend": "openvino", "size": [128, 128], "shape": [360, 480]}


@pytest.mark.slow
def test_benchmark_backends_table(tmp_path: Path) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="--compare needs segmentation_models_pytorch")
    output = tmp_path / "table.json"
    code, printed, errors = run_command([
        "benchmark", "--backends", "onnxruntime,openvino,int8", "--model", "efficientdet_d0_seg", "--num-classes", "11",
        "--resolution", "64", "--iters", "1", "--warmup", "1", "--threads", "1", "--compare",
        "--calibration", str(CAMVID / "val"), "--calibration-images", "2", "--agreement-images", "1", "--json", str(output),
    ])
    assert code == 0, printed + errors
    assert "| model | backend | median ms | × eager | × FPN eager | × FPN OpenVINO | argmax agreement with eager |" in printed
    rows = json.loads(output.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime", "openvino", "int8", "smp FPN eager", "smp FPN openvino"]
    assert rows[0]["vs_eager"] == 1.0 and rows[0]["agreement"] == 1.0
    assert all(r["median_ms"] > 0 and r["vs_fpn_eager"] > 0 and r["vs_fpn_openvino"] > 0 for r in rows)
    assert rows[1]["agreement"] >= 0.999 and rows[2]["agreement"] >= 0.999 and 0 <= rows[3]["agreement"] <= 1


@pytest.mark.slow  # seven commands, each in a fresh process
def test_bad_backend_input_is_one_line(ir_folder: tuple[Path, str], checkpoint: Path, tmp_path: Path) -> None:
    cases = [
        (["benchmark", "--backends", "eager,tensorrt"], "--backends: unknown tensorrt"),
        (["benchmark", "--backends", "int8", "--resolution", "64"], "INT8 needs real images to calibrate on"),
        (["benchmark", "--onnx", "x.onnx", "--backends", "openvino"], "not both"),
        (["predict", "--data", str(VAL_IMAGE), "--checkpoint", str(ir_folder[0]), "--backend", "onnxruntime",
          "--output", str(tmp_path)], "runs in openvino"),
        (["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(checkpoint)], "must be a folder"),
        (["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--int8", "--calibration", str(CAMVID / "val"),
          "--output", str(tmp_path / "m.pt")], "--int8 writes ONNX or OpenVINO"),
        (["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--int8", "--calibration", str(CAMVID / "val"),
          "--keep-float", "stem,head", "--output", str(tmp_path / "ir")], "unknown layer group(s) ['head']"),
    ]
    for argv, message in cases:
        code, printed, errors = run_command(argv)
        lines = errors.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, errors)


def test_missing_openvino_is_one_line(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    monkeypatch.setattr("effdetseg.inference.backends.openvino_installed", lambda: False)
    for argv in (["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(tmp_path / "ir")],
                 ["predict", "--data", str(VAL_IMAGE), "--checkpoint", str(checkpoint), "--backend", "openvino",
                  "--output", str(tmp_path / "out")]):
        code, printed, errors = run_cli(argv)
        assert code == 2 and errors.strip().splitlines() == [
            f"effdetseg {argv[0]}: error: the OpenVINO backend needs the optional extra: pip install 'effdetseg[openvino]'"
        ]
    assert not (tmp_path / "ir").exists() and not (tmp_path / "out").exists()
    # auto measures only the backends that are installed
    auto = Predictor(checkpoint, device="cpu", backend="auto")
    auto.predict(read_image(VAL_IMAGE))
    assert auto.backend in ("torch", "onnxruntime") and "openvino" not in auto.backend_note
