"""DDP: 2 processes (torchrun, gloo on CPU) validate to the same confusion matrix as 1 process."""
from __future__ import annotations

import pytest

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from effdetseg import read_record
from effdetseg.cli import main as cli_main
from conftest import REPO

pytestmark = pytest.mark.slow  # a two-process training run

VAL_IMAGES = 5  # odd: a padding DistributedSampler would count one image twice
TINY = [
    "train.model.backbone=mobilenetv3_small_050",
    "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16",
    "data.train_samples=4",  # one step of 2 images per process
    f"data.val_samples={VAL_IMAGES}",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.preprocessing.resize_height=64",
    "data.preprocessing.resize_width=64",
    "validation.batch_size=1",
    "validation.grid_images=1",
    "train.num_epochs=1",
    "train.ema.enabled=false",
    "train.progress=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_validation_matches_one_process(tmp_path: Path, capsys) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "effdetseg", "train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=ddp",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    # Rank 0 alone writes: one record per epoch, one report.
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert result.stdout.count("best validation: epoch 1") == 1
    assert "× 2 processes" in (run / "train.log").read_text()

    ddp_metrics = read_record(run / "best.pth").provenance.metrics
    assert ddp_metrics["pixels"] == VAL_IMAGES * 64 * 64  # every pixel once: no padded duplicates

    # The same weights evaluated by one process on the same validation set.
    assert cli_main(["evaluate", "--checkpoint", str(run / "best.pth"), "--batch-size", "1", "--no-progress"]) == 0
    capsys.readouterr()
    single = json.loads((run / "eval_best_synthetic.json").read_text())
    assert single["confusion_matrix"] == ddp_metrics["confusion_matrix"]
    assert sum(map(sum, single["confusion_matrix"])) == VAL_IMAGES * 64 * 64
    assert single["per_class"] == ddp_metrics["per_class"]
    assert single["miou"] == ddp_metrics["miou"]
