"""Nothing a refused command or an export can destroy: a resume that is refused leaves its
experiment folder byte for byte as it was, and export, predict, benchmark and evaluate outputs never
replace a checkpoint or a file a training run owns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.engine import experiment as exp
from effdetseg.io.record import Provenance

TINY = [
    "train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16", "data.batch_size=2", "data.num_workers=0",
    "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64",
    "train.progress=false", "validation.grid_images=1",
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def error_line(capsys: pytest.CaptureFixture, command: str, *names: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"effdetseg {command}: error: "), err[0]
    for name in names:
        assert name in err[0], (name, err[0])
    return err[0]


# ----------------------------------------------------------------------------- a refused resume


def test_reading_the_history_of_a_resume_rewrites_nothing_until_it_appends(tmp_path: Path) -> None:
    records = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "val": {"miou": 0.3}}]
    metrics = tmp_path / exp.METRICS
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "tra'  # the last line cut by a kill
    metrics.write_text(text)
    assert exp.read_history(tmp_path, 1) == records[:1]
    assert metrics.read_text() == text  # a resume refused now loses nothing
    exp.append_history(tmp_path, {"epoch": 2, "train_loss": 0.25})
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == [records[0], {"epoch": 2, "train_loss": 0.25}]
    exp.append_history(tmp_path, {"epoch": 3})
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_a_resume_refused_by_its_spent_budget_changes_nothing_in_the_folder(tmp_path: Path, capsys) -> None:
    # Epochs far longer than the budget: the run ends inside its first epoch, whose record (with
    # the run's only validation) is after the checkpoint's last complete epoch.
    argv = ["train", *TINY, "data.train_samples=4000", "data.val_samples=2", "data.cache=none", "validation.epoch_step=0",
            "train.max_minutes=0.4", f"experiments_dir={tmp_path}", "experiment_name=bud"]
    assert cli(argv) == 0
    run = tmp_path / "bud"
    history = (run / exp.METRICS).read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["val"]
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 0  # stopped inside epoch 1
    capsys.readouterr()
    before = snapshot(run)
    assert cli(["train", f"resume={run}"]) == 2
    error_line(capsys, "train", "train.max_minutes", "raise train.max_minutes")
    assert snapshot(run) == before
    # With other overrides (written to config.yaml before the budget is checked) too.
    assert cli(["train", f"resume={run}", "validation.grid_images=0"]) == 2
    capsys.readouterr()
    assert snapshot(run) == before
