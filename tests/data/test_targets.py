"""No code runs from an experiment folder: a config read from disk instantiates only allowed targets."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.configs.compose import compose
from effdetseg.configs.targets import check_target, instantiate
from effdetseg.errors import EffdetsegError
from effdetseg.io.record import Provenance

SMALL = ["data.val_samples=2", "data.train_samples=4", "data.num_workers=0", "data.batch_size=2",
         "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64"]


class Marker:
    """Unpickling it creates a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """An experiment folder as `effdetseg train` leaves it: config.yaml and best.pth."""
    run = tmp_path / "experiments" / "shared_run"
    run.mkdir(parents=True)
    OmegaConf.save(compose(SMALL), run / "config.yaml", resolve=True)
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=6, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    save_model(model, run / "best.pth", provenance=Provenance(data="synthetic"))
    return run


def poison(run: Path, key: str, node) -> None:
    cfg = OmegaConf.load(run / "config.yaml")
    OmegaConf.update(cfg, key, node, merge=False, force_add=True)
    OmegaConf.save(cfg, run / "config.yaml")


def one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"effdetseg {command}: error: ")
    return err[0]


def test_malicious_targets_in_an_experiment_config_are_refused(experiment: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    payload = experiment / "extra.bin"
    payload.write_bytes(pickle.dumps(Marker(marker)))
    cases = [
        # (key, node, the command that reads it, the key the error names)
        ("data.augmentation.val", [{"_target_": "numpy.load", "_args_": [str(payload)], "allow_pickle": True}], "evaluate",
         "data.augmentation.val[0]._target_: numpy.load"),
        ("train.loss.distribution", {"_target_": "builtins.open", "file": str(marker), "mode": "w"}, "train",
         "train.loss.distribution._target_: builtins.open"),
        ("data.augmentation.train", [{"_target_": "os.system", "_args_": [f"touch {marker}"]}], "train",
         "data.augmentation.train[0]._target_: os.system"),
        ("train.scheduler", {"_target_": "shutil.copyfile", "src": str(payload), "dst": str(marker)}, "train",
         "train.scheduler._target_: shutil.copyfile"),
        # An allowed prefix is not enough: the object must be of the allowed kind.
        ("data.augmentation.val", [{"_target_": "albumentations.os.system", "_args_": [f"touch {marker}"]}], "evaluate",
         "data.augmentation.val[0]._target_: albumentations.os.system"),
        ("train.loss.region", {"_target_": "torch.load", "f": str(payload), "weights_only": False}, "train",
         "train.loss.region._target_: torch.load"),
        # Nested inside an allowed transform.
        ("data.augmentation.val", [{"_target_": "albumentations.OneOf", "transforms": [{"_target_": "os.system", "_args_": [f"touch {marker}"]}]}],
         "evaluate", "data.augmentation.val[0].transforms[0]._target_: os.system"),
    ]
    original = (experiment / "config.yaml").read_text()
    for key, node, command, named in cases:
        (experiment / "config.yaml").write_text(original)
        poison(experiment, key, node)
        before = sorted(p.name for p in experiment.iterdir())
        if command == "train":
            argv = ["train", f"resume={experiment}"]
        else:
            argv = ["evaluate", "--checkpoint", str(experiment / "best.pth"), "--no-progress"]
        assert cli(argv) == 2, key
        line = one_error_line(capsys, command)
        assert named in line and "is not allowed" in line and "allow_targets=[" in line, line
        assert not marker.exists(), f"{key}: code ran"
        assert sorted(p.name for p in experiment.iterdir()) == before  # nothing written


def test_the_command_line_is_trusted_and_can_extend_the_allowlist(experiment: Path) -> None:
    # A target the user's own override sets is trusted.
    cfg = compose(["train.loss.region._target_=torch.nn.Identity"])
    assert cfg.train.loss.region._target_ == "torch.nn.Identity"
    # The same target read from a file is refused, unless the command line allows it.
    poison(experiment, "train.loss.region", {"_target_": "torch.nn.Flatten"})
    with pytest.raises(EffdetsegError, match=r"train\.loss\.region\._target_: torch\.nn\.Flatten is not allowed"):
        compose([], base=experiment / "config.yaml")
    cfg = compose(["allow_targets=[torch.nn.Flatten]"], base=experiment / "config.yaml")
    assert cfg.train.loss.region._target_ == "torch.nn.Flatten"
    poison(experiment, "train.loss.region", {"_target_": "torch.nn.modules.flatten.Unflatten", "dim": 1, "unflattened_size": [2, 3]})
    cfg = compose(["allow_targets=[torch.nn.modules.flatten.*]"], base=experiment / "config.yaml")
    assert instantiate(cfg.train.loss.region, "train.loss.region").dim == 1


def test_allowlist_by_kind_and_the_names_of_0_1_0() -> None:
    assert check_target("albumentations.HorizontalFlip", "k") == "albumentations.HorizontalFlip"
    assert check_target("torch.optim.AdamW", "k") == "torch.optim.AdamW"
    assert check_target("torch.optim.lr_scheduler.StepLR", "k") == "torch.optim.lr_scheduler.StepLR"
    assert check_target("torch.nn.CrossEntropyLoss", "k") == "torch.nn.CrossEntropyLoss"
    # Experiments written by effdetseg 0.1.0 name the training package by its old name.
    assert check_target("effdetseg.training.schedulers.WarmupPolyLR", "k") == "effdetseg.engine.schedulers.WarmupPolyLR"
    for name in ("torch.nn.Module", "effdetseg.cli.main", "effdetseg.io.files.atomic_write", "torch.optim.Optimizer.zero_grad",
                 "albumentations.core.serialization.load", "numpy.load", "posix.system"):
        with pytest.raises(EffdetsegError, match="is not allowed|does not exist"):
            check_target(name, "key")


@pytest.mark.slow
def test_checkpoint_metadata_is_never_instantiated(tmp_path: Path, capsys) -> None:
    """A record carrying a hostile training config: evaluate reads the preset's name only."""
    marker = tmp_path / "marker"
    config = OmegaConf.to_container(compose(SMALL), resolve=True, enum_to_str=True)
    config["data"]["augmentation"]["val"] = [{"_target_": "os.system", "_args_": [f"touch {marker}"]}]
    lone = tmp_path / "downloads" / "best.pth"
    lone.parent.mkdir()
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=6, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    save_model(model, lone, provenance=Provenance(data="synthetic", config=config))
    assert cli(["evaluate", "--checkpoint", str(lone), *SMALL, "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out and not marker.exists()
