"""`effdetseg train` and `effdetseg evaluate` end to end on tiny synthetic data (in-process)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from effdetseg import create_model, load_model, read_record, save_model
from effdetseg.cli import main as cli_main

pytestmark = pytest.mark.slow  # training runs, seconds to minutes each

# D0's BiFPN and head, narrowed, on a small timm backbone (any timm feature extractor plugs in)
# and 64×64 scenes: seconds per epoch on a CPU.
TINY = [
    "train.model.backbone=mobilenetv3_small_050",
    "data.train_samples=8",
    "data.val_samples=3",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.preprocessing.resize_height=64",
    "data.preprocessing.resize_width=64",
    "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16",
    "train.progress=false",
    "validation.grid_images=2",
]


def test_train_writes_the_experiment_and_evaluate_reproduces_its_validation(tmp_path, capsys) -> None:
    args = ["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=run", "train.num_epochs=2", "validation.epoch_step=2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "train.log", "curves.png", "per_class_iou.png", "val_grid.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "best validation: epoch 2" in out and "mIoU" in out and f"wrote {run}/" in out
    for name in ("background", "circle", "cross"):
        assert name in out

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0].get("val") is None and history[1]["val"]["pixels"] == 3 * 64 * 64  # epoch_step=2
    assert history[1]["global_step"] == 4 and all(math.isfinite(h["train_loss"]) for h in history)

    last = torch.load(run / "last.pth", weights_only=True)
    assert {"record", "model", "optimizer", "scheduler", "ema", "rng", "epoch", "global_step"} <= set(last)
    record = read_record(run / "last.pth")
    assert last["epoch"] == 2 and record.labels.names[0] == "background" and record.provenance.epoch == 2
    assert record.preprocessing.size == (64, 64) and record.provenance.data == "synthetic"
    assert record.provenance.config["train"]["num_epochs"] == 2 and record.provenance.command[:2] == ("effdetseg", "train")
    model = load_model(run / "best.pth")
    assert model.model_config["bifpn_channels"] == 16 and model.model_config["backbone"] == "mobilenetv3_small_050"
    assert model(torch.zeros(1, 3, 40, 56)).shape == (1, 6, 40, 56)

    # The same name again is refused, and nothing in the experiment changes.
    before = (run / "last.pth").stat().st_mtime_ns
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "last.pth").stat().st_mtime_ns == before

    # Resuming a finished run with more epochs goes on, stretching the warm-up/poly schedule.
    weights_after_2 = torch.load(run / "last.pth", weights_only=True)["model"]
    assert cli_main(["train", f"resume={run}", "train.num_epochs=3"]) == 0
    assert "resumed" in capsys.readouterr().out
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[2]["global_step"] == 6
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["scheduler"]["total_steps"] == 6
    assert any(not torch.equal(weights_after_2[k], v) for k, v in last["model"].items())  # lr was not 0

    # evaluate on the same validation set gives the validation's numbers (same confusion matrix).
    best = read_record(run / "best.pth").provenance.metrics
    assert cli_main(["evaluate", "--checkpoint", str(run / "best.pth"), "--no-progress"]) == 0
    report = json.loads((run / "eval_best_synthetic.json").read_text())
    assert report["pixels"] == best["pixels"] == 3 * 64 * 64
    assert report["miou"] == pytest.approx(best["miou"], abs=1e-6)
    assert report["per_class"] == best["per_class"]
    assert report["confusion_matrix"] == best["confusion_matrix"]
    assert "mIoU" in capsys.readouterr().out

    # Test-time augmentation and sliding windows run and are recorded.
    out_json = tmp_path / "tta.json"
    assert cli_main(["evaluate", "--checkpoint", str(run / "last.pth"), "--ema", "--tta", "flip,0.75,1.0", "--window", "48", "--output", str(out_json), "--no-progress"]) == 0
    tta = json.loads(out_json.read_text())
    assert tta["tta"] == {"flip": True, "scales": [0.75, 1.0]} and tta["slide"] == [48, 48] and tta["weights"] == "ema"


def test_amp_accumulation_clipping_and_the_original_exponential_schedule(tmp_path, capsys) -> None:
    # bf16 autocast is emulated (slow) on CPUs without bf16 units: keep this run to 2 batches of 2.
    args = [
        "train", *TINY, "data.batch_size=2", "data.train_samples=4", "data.val_samples=1",
        f"experiments_dir={tmp_path}", "experiment_name=amp", "train.num_epochs=1",
        "train.amp=true", "train.loss.accumulation_iter=2", "train.clip_grad_norm=1.0", "train.ema.enabled=false",
        "train.scheduler._target_=torch.optim.lr_scheduler.ExponentialLR", "train.scheduler.gamma=0.5",
        "train.optimizer.lr=0.001", "train.loss.region.loss_type=dice",
    ]
    assert cli_main(args) == 0
    last = torch.load(tmp_path / "amp" / "last.pth", weights_only=True)
    assert last["global_step"] == 1  # 2 batches, accumulated into one optimizer step
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0005)  # one epoch of ExponentialLR(0.5)
    assert last["ema"] is None and last["scaler"] is None  # bf16 on the CPU needs no GradScaler
    assert "best validation: epoch 1 (model weights)" in capsys.readouterr().out


def test_frozen_backbone_layers_keep_their_weights_and_batch_norm_statistics(tmp_path) -> None:
    initial = create_model("efficientdet_d0_seg", num_classes=6, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    save_model(initial, tmp_path / "initial.pth")
    args = ["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=frozen", "train.num_epochs=1",
            "train.freeze_backbone_stride=4", f"train.model.weights={tmp_path / 'initial.pth'}"]
    assert cli_main(args) == 0
    trained, before = load_model(tmp_path / "frozen" / "last.pth").state_dict(), initial.state_dict()
    frozen = [k for k in trained if k.startswith(("backbone.body.conv_stem.", "backbone.body.bn1.", "backbone.body.blocks.0."))]
    learned = [k for k in trained if k.startswith("backbone.body.blocks.3.") and k.endswith("weight")]
    assert frozen and learned
    assert all(torch.equal(trained[k], before[k]) for k in frozen)  # weights and running statistics alike
    assert not all(torch.equal(trained[k], before[k]) for k in learned)


def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path, capsys) -> None:
    # A NaN in the config is refused before anything is built or written ...
    args = ["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=nan", "train.num_epochs=1"]
    assert cli_main([*args, "train.loss.distribution.weight=[nan,1,1,1,1,1]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effdetseg train: error: train.loss.distribution.weight[0]: nan is not a finite number"
    # ... and a loss that becomes NaN in training stops the run at that step; the line names no
    # checkpoint that is not there (the run failed before its first one, so its folder is gone).
    assert cli_main([*args, "train.optimizer.lr=1e30", "train.ema.enabled=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effdetseg train: error: loss is nan at epoch 1, batch 2/2 (optimizer step 2); stopped, no checkpoint was written")
    assert not (tmp_path / "nan").exists()
    assert "\n" not in err
