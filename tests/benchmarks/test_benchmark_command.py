"""`effdetseg benchmark`: the table, the JSON, --compare with smp, memory measurement, bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from effdetseg import create_model
from effdetseg.benchmarking.model_table import cpu_peak_bytes
from effdetseg.cli import main as cli
from effdetseg.commands.args import parse_window
from effdetseg.commands.benchmark import parse_resolution
from effdetseg.errors import EffdetsegError
from effdetseg.inference.timing import time_alternating
from effdetseg.io.record import Preprocessing, parse_size
from effdetseg.models.complexity import count_parameters, model_complexity


@pytest.mark.slow
def test_benchmark_with_compare_writes_table_and_json(tmp_path: Path, capsys) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="--compare needs segmentation_models_pytorch")
    out = tmp_path / "bench.json"
    assert cli(["benchmark", "--model", "efficientdet_d0_seg", "--resolution", "64", "--batch", "2", "--device", "cpu",
                "--iters", "2", "--warmup", "1", "--compare", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median ms" in printed and "p90 ms" in printed and "img/s" in printed and "peak MiB" in printed
    info = json.loads(out.read_text())
    names = [r["model"] for r in info["results"]]
    assert names == [
        "efficientdet_d0_seg",
        "smp FPN (timm-efficientnet-b0)",
        "smp Unet (timm-efficientnet-b0)",
        "smp DeepLabV3Plus (timm-efficientnet-b0)",
    ]
    ours = info["results"][0]
    complexity = model_complexity("efficientdet_d0_seg", (64, 64), num_classes=21)
    assert ours["params"] == complexity["params"] == count_parameters(create_model("efficientdet_d0_seg"))
    assert ours["gmacs"] == pytest.approx(complexity["macs"] / 1e9)
    assert ours["relative_latency"] == 1.0
    for result in info["results"]:
        assert 0 < result["median_ms"] <= result["p90_ms"]
        assert result["images_per_s"] == pytest.approx(2 / (result["median_ms"] / 1000))
        assert result["weights_mib"] > 1 and result["peak_mib"] >= 0 and result["gmacs"] > 0
    # The smp models are different networks: their params and MACs differ from ours.
    assert len({r["params"] for r in info["results"]}) == 4


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    def allocate() -> None:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, touched
        block.add_(1)

    peak, lower_bound = cpu_peak_bytes(allocate)
    if sys.platform.startswith("linux"):  # VmHWM reset through /proc/self/clear_refs
        assert not lower_bound
        assert 60 * 2**20 <= peak < 512 * 2**20
    else:  # ru_maxrss growth: only a lower bound
        assert lower_bound and peak >= 0


def test_resolution_parsing() -> None:
    assert parse_resolution("512") == (512, 512)
    assert parse_resolution("384x640") == (384, 640)


def test_one_size_parser_for_the_record_and_every_option() -> None:
    assert parse_size(512) == parse_size("512") == parse_size(" 512 ") == (512, 512)
    assert parse_size("384x640") == parse_size("384×640") == parse_size("384X640") == parse_size((384, 640)) == (384, 640)
    for bad in ("big", "384x", "x640", "1x2x3", (1, 2, 3), True):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_window(False, "48", None) == (48, 48) and parse_window(False, "64x96", None) == (64, 96)
    with pytest.raises(EffdetsegError, match="--window: expected SIZE or HxW, got 'big'"):
        parse_window(False, "big", None)
    with pytest.raises(EffdetsegError, match="of at least 32 pixels"):
        parse_window(False, "16", None)
    with pytest.raises(EffdetsegError, match="sizes must be positive"):
        parse_resolution("0x512")
    assert Preprocessing().with_resolution("384x640").size == (384, 640)


def test_bad_input_gives_one_error_line(capsys) -> None:
    cases = [
        (["--model", "efficientdet_d9_seg"], "not a zoo model"),
        (["--resolution", "big"], "expected a size"),
        (["--resolution", "100", "--compare"], "divisible by 32"),
        (["--model", "unet", "--resolution", "64", "--compare"], "UNet has none"),
        (["--iters", "0"], "at least 1"),
    ]
    for argv, message in cases:
        assert cli(["benchmark", *argv, "--device", "cpu"]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("effdetseg benchmark: error: ") and message in err[0], err


def test_each_timed_call_follows_an_untimed_call_of_the_same_runner() -> None:
    """A runner's timed call must not come straight after another runner's call (that runtime's
    spinning threads would be timed with it): the fake clock advances only inside calls, and a call
    that directly follows another runner's costs 100 instead of 1."""
    now, last = [0.0], [None]

    def runner(name: str):
        def call() -> None:
            now[0] += 1.0 if last[0] == name else 100.0
            last[0] = name
        return call

    timings = time_alternating({"a": runner("a"), "b": runner("b")}, rounds=4, warmup=1, clock=lambda: now[0] / 1000)
    assert [t.median_ms for t in timings.values()] == pytest.approx([1.0, 1.0])
    unsettled = time_alternating({"a": runner("a"), "b": runner("b")}, rounds=4, warmup=1, settle=0, clock=lambda: now[0] / 1000)
    assert max(t.median_ms for t in unsettled.values()) == pytest.approx(100.0)  # without settling the switch is timed
