"""Exact resume: train, kill -9 mid-epoch, resume, finish = the uninterrupted run, bit for bit."""
from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from effdetseg import load_model
from effdetseg.cli import main as cli_main

pytestmark = pytest.mark.slow  # three training runs, one killed

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "train.model.backbone=mobilenetv3_small_050",
    "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16",
    "data.train_samples=12",
    "data.val_samples=2",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.preprocessing.resize_height=64",
    "data.preprocessing.resize_width=64",
    "train.progress=false",
    "train.num_epochs=3",
    "validation.epoch_step=3",
    "validation.grid_images=1",
    "deterministic=true",
]


def _wait_for_first_epoch(run: Path, proc: subprocess.Popen, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early: {proc.stderr.read() if proc.stderr else ''}"
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if lines:
            return json.loads(lines[0])
        time.sleep(0.02)
    raise AssertionError("the first epoch did not finish in time")


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    common = [*TINY, f"experiments_dir={tmp_path}"]
    assert cli_main(["train", *common, "experiment_name=full"]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "effdetseg", "train", *common, "experiment_name=killed"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = _wait_for_first_epoch(killed, proc)
        time.sleep(0.5 * first["epoch_time_s"])  # halfway through epoch 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # What the kill left is loadable, and it is from before the end of training.
    state = torch.load(killed / "last.pth", weights_only=True)
    assert 1 <= state["epoch"] < 3
    load_model(killed / "last.pth")

    assert cli_main(["train", f"resume={killed}"]) == 0

    full = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    resumed = torch.load(killed / "last.pth", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 3 and resumed["global_step"] == full["global_step"] == 9
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key
    for key in full["ema"]:
        assert torch.equal(full["ema"][key], resumed["ema"][key]), key
    for param_id, param_state in full["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][param_id][name]), (param_id, name)
    assert full["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"]

    full_history = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed_history = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in full_history]
    assert resumed_history[-1]["val"] == full_history[-1]["val"]
    assert "resumed" in (killed / "train.log").read_text()
