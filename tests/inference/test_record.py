"""The model record: one reader and one writer, files of effdetseg 0.1.0 still load, bad records are one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import effdetseg
from effdetseg import Predictor, create_model, load_model, read_record, save_model
from effdetseg.errors import EffdetsegError
from effdetseg.io.labels import LabelSet
from effdetseg.io.model_files import read_model_file, strip_wrapper_prefixes, write_model_file
from effdetseg.io.record import ModelRecord, Preprocessing, Provenance, ResizeMode, unwrap

LABELS = LabelSet(("sky", "road", "car"), ((0, 0, 255), (128, 64, 128), (255, 0, 0)))


def tiny(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("efficientdet_d0_seg", num_classes=num_classes, backbone="mobilenetv3_small_050",
                        bifpn_channels=16, head_channels=16).eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_record_round_trip(tmp_path: Path, suffix: str) -> None:
    model = tiny()
    preprocessing = Preprocessing((96, 128), ResizeMode.keep_aspect, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    provenance = Provenance(data="camvid", epoch=7, weights="ema", metrics={"miou": 0.5}, command=("effdetseg", "train"))
    path = tmp_path / f"model{suffix}"
    save_model(model, path, preprocessing=preprocessing, labels=LABELS, provenance=provenance)
    record = read_record(path)
    assert record.architecture.config() == model.model_config
    assert record.preprocessing == preprocessing and record.labels == LABELS
    assert record.provenance.data == "camvid" and record.provenance.epoch == 7 and record.provenance.weights == "ema"
    assert record.provenance.metrics == {"miou": 0.5} and record.provenance.command == ("effdetseg", "train")
    assert record.provenance.effdetseg_version == effdetseg.__version__ and record.provenance.created
    same_outputs(load_model(path), model)
    # The labels use the one serialization, the original project's labels JSON format.
    if suffix == ".pth":
        stored = torch.load(path, weights_only=True)["record"]
        assert stored["labels"]["2"] == {"class": "car", "color": [255, 0, 0]}


@pytest.mark.slow
def test_files_written_by_effdetseg_0_1_0_still_load(tmp_path: Path) -> None:
    """The formats main wrote: a torch dict with model_config, labels {names, colors}, normalize and
    input_size (train's best.pth/last.pth, save_model's .pth); safetensors with the config in the
    effdetseg_model_config metadata; bare state dicts with the model named by flags."""
    model = tiny()
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    best = tmp_path / "best.pth"
    torch.save({
        "model_config": dict(model.model_config),
        "model": state_dict,
        "labels": {"names": list(LABELS.names), "colors": [list(c) for c in LABELS.colors]},
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "input_size": [96, 128],
        "epoch": 3,
        "source": "ema",
        "metrics": {"miou": 0.25},
    }, best)
    record = read_record(best)
    assert record.architecture.config() == model.model_config and record.labels == LABELS
    assert record.preprocessing == Preprocessing((96, 128), ResizeMode.fixed, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert record.provenance.epoch == 3 and record.provenance.weights == "ema" and record.provenance.metrics == {"miou": 0.25}
    same_outputs(load_model(best), model)
    predictor = Predictor(best, device="cpu")
    assert predictor.labels == LABELS and predictor.preprocessing.size == (96, 128)

    # A training last.pth of 0.1.0: the training state comes through beside the weights.
    last = tmp_path / "last.pth"
    torch.save({"model_config": dict(model.model_config), "model": state_dict, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 4, "lr_lambdas": [{"total_steps": 8}]}, "epoch": 2, "global_step": 4,
                "rng": {}, "ema": state_dict, "best": None}, last)
    file = read_model_file(last)
    assert file.training_state["epoch"] == 2 and file.training_state["scheduler"]["last_epoch"] == 4
    assert set(file.training_state["ema"]) == set(state_dict)

    legacy_safetensors = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(legacy_safetensors),
              metadata={"effdetseg_model_config": json.dumps(dict(model.model_config))})
    record = read_record(legacy_safetensors)
    # No stored preprocessing: what predict used, 512² and the backbone's timm mean/std.
    assert record.preprocessing.size == (512, 512) and record.preprocessing.resize is ResizeMode.fixed
    assert record.preprocessing.mean == tuple(model.backbone.pretrained_cfg["mean"])
    same_outputs(load_model(legacy_safetensors), model)

    bare = tmp_path / "bare.pth"
    torch.save(state_dict, bare)
    assert read_record(bare) is None
    with pytest.raises(EffdetsegError, match="bare state dict"):
        load_model(bare)
    # With the architecture named (the original's flags), a bare state dict loads.
    default = create_model("efficientdet_d0_seg", num_classes=3).eval()
    torch.save(default.state_dict(), bare)
    predictor = Predictor(bare, device="cpu", model_name="efficientdet_d0_seg", num_classes=3, resolution=32)
    assert predictor.num_classes == 3 and predictor.labels is None and predictor.preprocessing.size == (32, 32)


@pytest.mark.slow
def test_wrapper_prefixes_are_stripped_in_one_place(tmp_path: Path) -> None:
    model = tiny()
    ddp_compiled = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert strip_wrapper_prefixes(ddp_compiled).keys() == model.state_dict().keys()
    path = tmp_path / "wrapped.pth"
    torch.save({"model_config": dict(model.model_config), "model": ddp_compiled}, path)
    same_outputs(load_model(path), model)
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    write_model_file(tmp_path / "c.pth", ModelRecord.for_model(compiled), compiled.state_dict())
    assert set(torch.load(tmp_path / "c.pth", weights_only=True)["model"]) == set(model.state_dict())


def test_predictor_reads_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    save_model(tiny(), path, labels=LABELS)
    reads = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        reads.append(args[0] if args else kwargs.get("f"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    predictor = Predictor(path, device="cpu", resolution=32)
    assert len(reads) == 1
    assert predictor.labels == LABELS
    assert predictor.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


def test_bad_records_are_one_line_naming_the_file(tmp_path: Path) -> None:
    model = tiny()
    good = ModelRecord.for_model(model).to_dict()
    cases = [
        ({**good, "version": 99}, "written by a newer effdetseg"),
        ({**good, "architecture": {"name": "efficientdet_d0_seg", "num_classes": "three"}}, "architecture.num_classes must be a positive integer"),
        ({**good, "preprocessing": {**good["preprocessing"], "std": [0, 1, 1]}}, "preprocessing.std: expected 3 numbers > 0"),
        ({**good, "labels": {"0": {"class": "a"}}}, 'class 0 (a) has no valid "color"'),
        ({**good, "architecture": {"name": "no_such_net", "num_classes": 3}}, "cannot build 'no_such_net'"),
    ]
    for i, (record, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.pth"
        torch.save({"record": record, "model": model.state_dict()}, path)
        with pytest.raises(EffdetsegError, match=re.escape(message)) as error:
            load_model(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": object()}, pickled)
    with pytest.raises(EffdetsegError) as error:
        read_model_file(pickled)
    assert "never unpickled" in str(error.value) and "weights_only=False" not in str(error.value)


@pytest.mark.slow
def test_an_experiment_written_by_0_1_0_resumes(tmp_path: Path, capsys) -> None:
    """config.yaml with 0.1.0's target names and keys, last.pth in 0.1.0's format with a LambdaLR
    scheduler state: `train resume=` goes on from its position."""
    from omegaconf import OmegaConf

    from effdetseg.cli import main as cli
    from effdetseg.configs.compose import compose
    from effdetseg.engine.builders import build_model, build_optimizer
    from effdetseg.engine.checkpoints import rng_state

    run = tmp_path / "old_run"
    run.mkdir()
    overrides = ["train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
                 "+train.model.overrides.head_channels=16", "data.train_samples=4", "data.val_samples=2", "data.batch_size=2",
                 "data.num_workers=0", "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64",
                 "train.progress=false", "train.num_epochs=1", "validation.grid_images=1", f"experiments_dir={tmp_path}"]
    cfg = compose(overrides)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    del config["data"]["augmentation"]["inference_resize"]  # 0.1.0 had no such key
    config["train"]["scheduler"]["_target_"] = "effdetseg.training.schedulers.WarmupPolyLR"
    config["train"]["loss"]["region"]["_target_"] = "effdetseg.training.losses.RegionLoss"
    OmegaConf.save(OmegaConf.create(config), run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.train.model)
    optimizer = build_optimizer(cfg.train.optimizer, model)
    lambda_lr_state = {"lr_lambdas": [{"total_steps": 2, "warmup_steps": 1, "warmup_factor": 0.01, "power": 0.9, "min_factor": 0.0}],
                       "base_lrs": [0.004] * len(optimizer.param_groups), "last_epoch": 2, "_step_count": 3,
                       "_last_lr": [0.0] * len(optimizer.param_groups), "verbose": False}
    torch.save({"model_config": dict(model.model_config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": lambda_lr_state, "scaler": None, "ema": model.state_dict(), "epoch": 1, "global_step": 2,
                "best": None, "rng": [rng_state()], "labels": {"names": ["background"] * 6, "colors": [[0, 0, 0]] * 6},
                "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "input_size": [64, 64]}, run / "last.pth")
    assert cli(["train", f"resume={run}", "train.num_epochs=2"]) == 0
    assert "resumed" in capsys.readouterr().out
    last = read_model_file(run / "last.pth")
    assert last.record is not None and last.training_state["epoch"] == 2 and last.training_state["global_step"] == 4
    assert last.training_state["scheduler"]["last_epoch"] == 4 and last.training_state["scheduler"]["total_steps"] == 4
    # The old experiment had no inference_resize: it validated at the original size, as 0.1.0 did.
    assert last.record.preprocessing.resize is ResizeMode.original
