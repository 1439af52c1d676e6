"""The command line: one flag style (with the original's spellings as aliases), --device on every
command that runs a model, one error line for a bad argument, the bf16-on-CPU warning."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import effdetseg.devices
from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.commands import benchmark, evaluate, export, predict
from effdetseg.devices import resolve_device, slow_bf16_warning
from effdetseg.errors import EffdetsegError
from conftest import SHARED_DATA


def one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"effdetseg {command}: error: "), err
    return err[0]


def option_strings(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_one_flag_style_with_the_original_spellings_as_aliases() -> None:
    parsers = {
        "predict": predict.build_parser(), "evaluate": evaluate.build_parser(), "export": export.build_parser(),
        "benchmark": benchmark.build_parser(),
    }
    for name, parser in parsers.items():
        options = option_strings(parser)
        assert "--device" in options, name
        snake = {o for o in options if "_" in o} - {"--num_classes", "--output_name", "--batch_size"}
        assert not snake, (name, snake)  # kebab-case, apart from the original project's spellings
    for name in ("predict", "export", "benchmark"):
        assert {"--num-classes", "--num_classes"} <= option_strings(parsers[name]), name
    for name in ("predict", "export"):
        assert {"--output", "--output_name"} <= option_strings(parsers[name]), name
    assert {"--batch-size", "--batch_size"} <= option_strings(parsers["predict"])
    args = parsers["predict"].parse_args(["--data", "x", "--num_classes", "3", "--output_name", "o.png", "--batch_size", "2"])
    assert (args.num_classes, args.output, args.batch_size) == (3, "o.png", 2)


def test_device_is_resolved_in_one_place() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EffdetsegError, match="'gpu' is not a device"):
        resolve_device("gpu")
    with pytest.raises(EffdetsegError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(EffdetsegError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_every_command_takes_device_and_reports_one_line(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "m.pth"
    torch.manual_seed(0)
    save_model(create_model("efficientdet_d0_seg", num_classes=3, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16), checkpoint)
    image = SHARED_DATA / "voc2012_sample" / "JPEGImages" / "2007_000033.jpg"
    cases = {
        "predict": ["--data", str(image), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "p")],
        "classify": ["--data", str(image)],
        "evaluate": ["--checkpoint", str(checkpoint)],
        "export": ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.onnx")],
        "benchmark": [],
        "train": [],
    }
    for command, argv in cases.items():
        assert cli([command, *argv, "--device", "gpu"]) == 2, command
        assert "'gpu' is not a device" in one_error_line(capsys, command)
    assert cli(["train", "--device", "cpu", "--cfg"]) == 0
    assert "device: cpu" in capsys.readouterr().out
    # argparse's own errors are one line too, not usage + error.
    for argv, message in [
        (["predict", "--data", "x", "--resolution", "big"], "argument --resolution: invalid int value: 'big'"),
        (["classify", "--data", str(image), "--top-k", "0"], "--top-k must be at least 1"),
        (["classify", "--data", str(image), "--model", "efficientdet_d0_seg"], "is a segmentation model"),
        (["benchmark", "--batch-size", "x"], "argument --batch-size/--batch: invalid int value"),
        (["evaluate"], "the following arguments are required: --checkpoint"),
        (["models", "--resolution", "x"], "argument --resolution: invalid int value"),
        (["data", "check", "--splits"], "expected at least one argument"),
    ]:
        assert cli(argv) == 2, argv
        assert message in one_error_line(capsys, argv[0])


def test_bf16_on_a_cpu_without_native_support_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(effdetseg.devices, "cpu_has_native_bf16", lambda: False)
    line = slow_bf16_warning(torch.device("cpu"), torch.bfloat16, "train.amp=true")
    assert line.startswith("warning: train.amp=true:") and "slower than fp32" in line and "\n" not in line
    assert slow_bf16_warning(torch.device("cpu"), None, "train.amp=true") is None
    assert slow_bf16_warning(torch.device("cuda"), torch.bfloat16, "--amp") is None
    monkeypatch.setattr(effdetseg.devices, "cpu_has_native_bf16", lambda: True)
    assert slow_bf16_warning(torch.device("cpu"), torch.bfloat16, "--amp") is None
