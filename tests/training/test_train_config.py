"""The train config tree: original keys, overrides, errors, schedulers, experiment directories."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from effdetseg.cli import main as cli_main
from effdetseg.errors import EffdetsegError
from effdetseg.engine.builders import build_model, build_optimizer, build_scheduler, freeze_backbone_layers
from effdetseg.configs.compose import compose
from effdetseg.engine.experiment import create_experiment_dir, train_config
from effdetseg.engine.schedulers import WarmupCosineLR, WarmupPolyLR, schedule_kind


def test_default_config_has_the_original_keys() -> None:
    cfg = compose([])
    assert cfg.train.model.name == "efficientdet_d0_seg"
    assert cfg.train.model.backbone_pretrained is False
    assert cfg.train.model.num_classes == cfg.data.num_classes  # ${data.num_classes}
    assert cfg.data.name == "synthetic"
    for key in (
        "experiment_name", "train.amp", "train.num_epochs", "train.model.weights", "train.model.optimizer_state",
        "train.optimizer._target_", "train.optimizer.lr", "train.optimizer.weight_decay", "train.scheduler._target_",
        "train.loss.accumulation_iter", "train.loss.distribution._target_", "train.loss.distribution.ignore_index",
        "train.loss.region._target_", "train.loss.region.loss_type", "validation.epoch_step",
        "data.preprocessing.resize_height", "data.preprocessing.resize_width", "data.preprocessing.resize_mask_height",
        "data.preprocessing.resize_mask_width", "data.batch_size",
    ):
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert cfg.train.loss.distribution.ignore_index == 255


def test_the_issue_overrides_compose_and_build() -> None:
    cfg, resume = train_config(
        [
            "train.optimizer._target_=torch.optim.AdamW", "train.optimizer.lr=7e-5",
            "train.scheduler._target_=torch.optim.lr_scheduler.ExponentialLR", "train.scheduler.gamma=0.975",
            "train.loss.region.loss_type=dice", "train.loss.accumulation_iter=2", "validation.epoch_step=2",
            "data.preprocessing.resize_height=96", "data.batch_size=4",
        ]
    )
    assert resume is None
    # Changing the scheduler's _target_ drops the default's keys ExponentialLR does not take.
    assert dict(cfg.train.scheduler) == {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.975}
    assert cfg.train.loss.region.loss_type == "dice" and cfg.train.loss.accumulation_iter == 2
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(cfg.train.optimizer, model)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == pytest.approx(7e-5)
    # Weight decay on the conv weight only, not on biases and norm parameters.
    decays = sorted((g["weight_decay"], len(g["params"])) for g in optimizer.param_groups)
    assert decays == [(0.0, 3), (cfg.train.optimizer.weight_decay, 1)]
    scheduler, kind = build_scheduler(cfg.train.scheduler, optimizer, epochs=10, steps_per_epoch=5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR) and scheduler.gamma == 0.975
    assert kind.per_step is False  # the original's scheduler steps once per epoch

    sgd = compose(["train.optimizer._target_=torch.optim.SGD", "train.optimizer.momentum=0.9"])
    assert build_optimizer(sgd.train.optimizer, model).defaults["momentum"] == 0.9
    # A new _target_ keeps the keys every optimizer takes (lr, weight_decay), nothing else of the old one.
    assert dict(sgd.train.optimizer) == {"_target_": "torch.optim.SGD", "lr": 0.004, "weight_decay": 0.0001, "momentum": 0.9}


def test_unknown_keys_fail_with_one_line_naming_the_key(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["train", "train.optimzer.lr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effdetseg train: error: unknown key 'train.optimzer.lr' (did you mean train.optimizer.lr?)"
    assert cli_main(["train", "data=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effdetseg train: error: data=nope: no such data preset; choose from") and "synthetic" in err
    assert "\n" not in err
    # Inside a _target_ node, the constructor is the judge: a misspelt argument fails when it is built.
    cfg = compose(["train.scheduler.pwoer=2"])
    with pytest.raises(EffdetsegError, match=r"train\.scheduler .*pwoer"):
        build_scheduler(cfg.train.scheduler, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 2, 2)


def test_type_and_consistency_checks() -> None:
    with pytest.raises(EffdetsegError, match="train.num_epochs must be a positive integer"):
        train_config(["train.num_epochs=0"])
    with pytest.raises(EffdetsegError, match=r"train.model.num_classes \(3\) differs from data.num_classes"):
        train_config(["train.model.num_classes=3"])
    with pytest.raises(EffdetsegError, match="train.model.name: 'efficientnet_b0' is not a segmentation model"):
        build_model(compose(["train.model.name=efficientnet_b0"]).train.model)
    with pytest.raises(EffdetsegError, match="train.model.backbone_pretrained: /nonexistent.pth is not a file"):
        build_model(compose(["train.model.backbone_pretrained=/nonexistent.pth"]).train.model)


def test_backbone_and_architecture_overrides_reach_the_model() -> None:
    cfg = compose(
        ["train.model.backbone=mobilenetv3_large_100", "+train.model.overrides.bifpn_channels=24", "+train.model.overrides.head_channels=16"]
    )
    model = build_model(cfg.train.model)
    assert model.model_config["backbone"] == "mobilenetv3_large_100"
    assert model.model_config["bifpn_channels"] == 24 and model.num_classes == cfg.data.num_classes
    with pytest.raises(EffdetsegError, match="train.model:.*unknown override"):
        build_model(compose(["+train.model.overrides.bifpn_chanels=24"]).train.model)


def test_overrides_on_a_config_file(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    OmegaConf.save(compose([]), path, resolve=True)
    cfg = compose(["train.num_epochs=40", "train.scheduler.power=2.0"], base=path)
    assert cfg.train.num_epochs == 40 and cfg.train.scheduler.power == 2.0
    with pytest.raises(EffdetsegError, match="unknown key 'train.nope'"):
        compose(["train.nope=1"], base=path)
    with pytest.raises(EffdetsegError, match="config groups cannot change"):
        compose(["data=voc"], base=path)
    # The file itself is checked against the schema too: a wrong type names the file and the key.
    text = path.read_text().replace("num_epochs: 4", "num_epochs: four")
    path.write_text(text)
    with pytest.raises(EffdetsegError, match=r"config\.yaml: train\.num_epochs: Value 'four'"):
        compose([], base=path)


def test_warmup_poly_and_cosine_schedules() -> None:
    def lrs(scheduler_cls, **kw):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = scheduler_cls(opt, epochs=4, steps_per_epoch=10, warmup_epochs=1, warmup_factor=0.1, **kw)
        values = []
        for _ in range(40):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return values

    poly = lrs(WarmupPolyLR, power=1.0)
    assert poly[0] == pytest.approx(0.1) and poly[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert poly[10] == pytest.approx(1.0) and poly[25] == pytest.approx(0.5)  # linear decay over 30 steps
    assert all(a >= b for a, b in zip(poly[10:], poly[11:]))
    cosine = lrs(WarmupCosineLR, min_lr_ratio=0.0)
    assert cosine[10] == pytest.approx(1.0) and cosine[25] == pytest.approx(0.5)
    assert cosine[39] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert schedule_kind(WarmupPolyLR).per_step and schedule_kind(torch.optim.lr_scheduler.OneCycleLR).per_step
    assert not schedule_kind(torch.optim.lr_scheduler.ExponentialLR).per_step


def test_experiments_are_never_overwritten(tmp_path) -> None:
    cfg = compose([f"experiments_dir={tmp_path}", "experiment_name=run1"])
    path = create_experiment_dir(cfg)
    assert path == tmp_path / "run1" and path.is_dir()
    with pytest.raises(EffdetsegError, match=r"run1 already exists; .*resume="):
        create_experiment_dir(cfg)
    unnamed = compose([f"experiments_dir={tmp_path}"])
    first, second = create_experiment_dir(unnamed), create_experiment_dir(unnamed)
    assert first != second and first.name.startswith("efficientdet_d0_seg_synthetic_")


def test_decoder_lr_scale_splits_backbone_and_decoder() -> None:
    cfg = compose(["train.optimizer.lr=1e-3", "train.decoder_lr_scale=5"])
    model = build_model(OmegaConf.create({"name": "efficientdet_d0_seg", "num_classes": 3, "backbone": "mobilenetv3_small_050",
                                          "backbone_pretrained": False, "weights": None, "overrides": {}}))
    optimizer = build_optimizer(cfg.train.optimizer, model, float(cfg.train.decoder_lr_scale))
    backbone = {id(p) for p in model.backbone.parameters()}
    seen = 0
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # no group mixes backbone and decoder
        assert group["lr"] == pytest.approx(1e-3 if in_backbone.pop() else 5e-3)
        seen += len(group["params"])
    assert seen == len(list(model.parameters())) and len(optimizer.param_groups) == 4
    scheduler, _ = build_scheduler(cfg.train.scheduler, optimizer, epochs=2, steps_per_epoch=5)
    assert sorted(scheduler.base_lrs) == pytest.approx([1e-3, 1e-3, 5e-3, 5e-3])
    with pytest.raises(EffdetsegError, match="decoder_lr_scale"):
        build_optimizer(cfg.train.optimizer, torch.nn.Conv2d(3, 3, 1), 5.0)


@pytest.mark.parametrize(
    ("backbone", "stride", "frozen"),
    [
        ("tf_efficientnet_lite0", 2, ["conv_stem", "bn1", "blocks.0"]),
        ("tf_efficientnet_lite0", 4, ["conv_stem", "bn1", "blocks.0", "blocks.1"]),
        ("resnet18", 4, ["conv1", "bn1", "act1", "maxpool", "layer1"]),
    ],
)
def test_freeze_backbone_stride_freezes_the_stem_and_early_stages(backbone: str, stride: int, frozen: list[str]) -> None:
    model = build_model(OmegaConf.create({"name": "efficientdet_d0_seg", "num_classes": 3, "backbone": backbone,
                                          "backbone_pretrained": False, "weights": None, "overrides": {}}))
    body = model.backbone.body
    layers = freeze_backbone_layers(model, stride)
    assert [body.get_submodule(name) for name in frozen] == layers
    names = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert names == {n for n, _ in body.named_parameters() if n.split(".")[0] in frozen or ".".join(n.split(".")[:2]) in frozen}
    assert all(p.requires_grad for p in model.bifpn.parameters())
    optimizer = build_optimizer(OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": 1e-3}), model)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for layer in layers for p in layer.parameters()}
    assert freeze_backbone_layers(model, 0) == []
    with pytest.raises(EffdetsegError, match="freeze_backbone_stride: .*no layer with output stride 64"):
        freeze_backbone_layers(model, 64)


def test_loss_options_compose_from_the_command_line_and_build() -> None:
    """OHEM / focal as the distribution term, Lovász as the region term, median-frequency class
    weights: the trainer's config keys, allowed targets, counted from the training masks."""
    import numpy as np

    from effdetseg.data import build_dataset
    from effdetseg.data.check import class_pixels_per_image
    from effdetseg.engine.losses import build_loss

    cfg = compose([
        "train.loss.distribution._target_=effdetseg.engine.losses.OhemCrossEntropyLoss",
        "train.loss.distribution.min_kept=1000", "train.loss.class_weights=median_frequency",
        "train.loss.region._target_=effdetseg.engine.losses.LovaszSoftmaxLoss",
        "data.train_samples=4", "data.preprocessing.resize_height=32", "data.preprocessing.resize_width=32",
    ])
    # A new _target_ keeps ignore_index and weight, drops cross-entropy's label_smoothing.
    assert set(cfg.train.loss.distribution) == {"_target_", "ignore_index", "weight", "min_kept"}
    dataset = build_dataset(cfg.data, "train")
    counts = class_pixels_per_image(dataset, cfg.data.num_classes)
    assert counts.shape == (4, cfg.data.num_classes) and counts.sum() > 0
    loss = build_loss(cfg.train.loss, cfg.data.num_classes, lambda: counts)
    assert loss.distribution.min_kept == 1000 and loss.distribution.weight.shape == (cfg.data.num_classes,)
    assert np.isfinite(loss.distribution.weight.numpy()).all()
    focal = compose(["train.loss.distribution._target_=effdetseg.engine.losses.FocalLoss", "train.loss.distribution.gamma=1"])
    assert build_loss(focal.train.loss, focal.data.num_classes).distribution.gamma == 1.0
