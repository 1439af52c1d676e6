"""Exact resume: train, kill -9 mid-epoch, resume, finish = the uninterrupted run, bit for bit —
from an epoch-end checkpoint, and from a mid-epoch one (``train.checkpoint_every_steps``)."""
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
from conftest import REPO

pytestmark = pytest.mark.slow  # three training runs, one killed

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


def _kill_after_a_mid_epoch_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 240.0) -> dict:
    """SIGKILL ``proc`` at a moment when its last.pth is a mid-epoch checkpoint: on each new
    last.pth the process is stopped (SIGSTOP), the file read, and killed if it is one."""
    deadline = time.monotonic() + timeout
    last, seen = run / "last.pth", None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early: {proc.stderr.read() if proc.stderr else ''}"
        stamp = last.stat().st_mtime_ns if last.is_file() else None
        if stamp is not None and stamp != seen:
            os.kill(proc.pid, signal.SIGSTOP)
            state = torch.load(last, weights_only=True)
            if state["epoch_position"] is not None and state["epoch"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                return state
            seen = last.stat().st_mtime_ns
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("no mid-epoch checkpoint in time")


def _train_killed(tmp_path: Path, name: str, overrides: list[str], kill) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "effdetseg", "train", *TINY, f"experiments_dir={tmp_path}", f"experiment_name={name}", *overrides],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        kill(tmp_path / name, proc)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc


def _assert_same_run(full_dir: Path, resumed_dir: Path) -> None:
    full = torch.load(full_dir / "last.pth", weights_only=True)
    resumed = torch.load(resumed_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 3 and resumed["global_step"] == full["global_step"]
    assert resumed["epoch_position"] is None
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key
    for key in full["ema"]:
        assert torch.equal(full["ema"][key], resumed["ema"][key]), key
    for param_id, param_state in full["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][param_id][name]), (param_id, name)
    assert full["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"]

    full_history = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_history = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in full_history]
    assert resumed_history[-1]["val"] == full_history[-1]["val"]
    assert "resumed" in (resumed_dir / "train.log").read_text()


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    assert cli_main(["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=full"]) == 0

    # Killed halfway through epoch 2 with epoch-end checkpoints only: epoch 2 is trained again.
    def halfway_through_epoch_2(run: Path, proc: subprocess.Popen) -> None:
        first = _wait_for_first_epoch(run, proc)
        time.sleep(0.5 * first["epoch_time_s"])
        os.kill(proc.pid, signal.SIGKILL)

    killed = tmp_path / "killed"
    _train_killed(tmp_path, "killed", [], halfway_through_epoch_2)
    # What the kill left is loadable, and it is from before the end of training.
    state = torch.load(killed / "last.pth", weights_only=True)
    assert 1 <= state["epoch"] < 3
    load_model(killed / "last.pth")
    assert cli_main(["train", f"resume={killed}"]) == 0
    _assert_same_run(tmp_path / "full", killed)

    # Killed right after a mid-epoch checkpoint (every optimizer step): the resumed run continues
    # from that step and still ends bit-identical to the uninterrupted run (which wrote none).
    mid = tmp_path / "mid"
    state = {}
    _train_killed(tmp_path, "mid", ["train.checkpoint_every_steps=1"],
                  lambda run, proc: state.update(_kill_after_a_mid_epoch_checkpoint(run, proc)))
    on_disk = torch.load(mid / "last.pth", weights_only=True)
    assert on_disk["epoch_position"] == state["epoch_position"]  # the kill landed there: mid-epoch
    assert 1 <= on_disk["epoch"] < 3 and 0 < on_disk["epoch_position"]["batches"] < 3
    assert on_disk["global_step"] == 3 * on_disk["epoch"] + on_disk["epoch_position"]["batches"]
    assert cli_main(["train", f"resume={mid}"]) == 0
    log = (mid / "train.log").read_text()
    assert f"after batch {on_disk['epoch_position']['batches']} of epoch {on_disk['epoch'] + 1}" in log
    _assert_same_run(tmp_path / "full", mid)
