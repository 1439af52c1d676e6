"""Training-only auxiliary heads: they train, and nothing a trained model ships knows of them."""
from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf

import effdetseg
from effdetseg.engine.auxiliary import DeepSupervision, attach_aux_heads, deep_supervision_loss
from effdetseg.engine.losses import build_loss
from effdetseg.errors import EffdetsegError

TINY = dict(backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16, head_layers=1)
LOSS = {"distribution": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": 255}, "region": None}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return effdetseg.create_model("efficientdet_d0_seg", num_classes=3, **TINY)


def test_aux_heads_add_a_loss_per_level_and_their_gradient_reaches_the_bifpn() -> None:
    model = tiny_model().train()
    wrapped = attach_aux_heads(model, OmegaConf.create({"levels": [3, 5], "weight": 0.5}), 3)
    assert isinstance(wrapped, DeepSupervision) and wrapped.backbone is model.backbone
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    masks[:, :8] = 255
    logits, aux = wrapped(images)
    assert logits.shape == (2, 3, 64, 64) and [a.shape[-1] for a in aux] == [128 // 8, 128 // 32]  # padded to 128
    criterion = build_loss(OmegaConf.create(LOSS), 3)
    loss = deep_supervision_loss(criterion, wrapped, 0.5)
    total, parts = loss((logits, aux), masks)
    main = criterion(logits, masks)[0]
    assert total.item() == pytest.approx(main.item() + 0.5 * parts["aux"].item(), rel=1e-5)
    assert parts["aux"].item() > 0
    total.backward()
    assert all(p.grad is not None for p in wrapped.heads.parameters())
    # Plain logits (validation, a model without heads) pass straight through.
    assert loss(logits.detach(), masks)[0].item() == pytest.approx(main.item(), rel=1e-6)


def test_bad_aux_settings_are_one_line_naming_the_key() -> None:
    model = tiny_model()
    assert attach_aux_heads(model, OmegaConf.create({"levels": [], "weight": 0.4}), 3) is None
    for cfg, message in [
        ({"levels": [1, 3]}, r"train\.aux_heads\.levels: expected distinct pyramid levels from 2 to 7, got \[1, 3\]"),
        ({"levels": [3, 3]}, r"train\.aux_heads\.levels"),
        ({"levels": [3], "weight": 0}, r"train\.aux_heads\.weight: expected a number > 0"),
    ]:
        with pytest.raises(EffdetsegError, match=message):
            attach_aux_heads(model, OmegaConf.create(cfg), 3)
    unet = effdetseg.create_model("unet", num_classes=3)
    with pytest.raises(EffdetsegError, match=r"train\.aux_heads\.levels: .* has no feature pyramid"):
        attach_aux_heads(unet, OmegaConf.create({"levels": [3]}), 3)


@pytest.mark.slow
def test_a_model_trained_with_aux_heads_exports_exactly_as_one_without(tmp_path) -> None:
    """Trained with heads, saved, loaded, exported: the same record, weights, counts and ONNX graph as
    the same weights in a model that never had heads."""
    import onnx

    from effdetseg.io.record import Architecture
    from effdetseg.models.complexity import count_macs, count_parameters

    model = tiny_model().train()
    wrapped = attach_aux_heads(model, OmegaConf.create({"levels": [3, 4, 5], "weight": 0.4}), 3)
    loss = deep_supervision_loss(build_loss(OmegaConf.create(LOSS), 3), wrapped, 0.4)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    loss(wrapped(torch.randn(2, 3, 64, 64)), torch.randint(0, 3, (2, 64, 64)))[0].backward()
    optimizer.step()

    plain = tiny_model()  # never had heads
    plain.load_state_dict(model.state_dict())  # strict: the same keys, no head among them
    assert Architecture.of(model) == Architecture.of(plain)
    effdetseg.save_model(model, tmp_path / "m.safetensors")
    loaded = effdetseg.load_model(tmp_path / "m.safetensors")
    assert set(loaded.state_dict()) == set(plain.state_dict())
    assert count_parameters(model) == count_parameters(plain)
    assert count_macs(model, (128, 128)) == count_macs(plain, (128, 128))

    def exported(m: torch.nn.Module) -> onnx.ModelProto:
        buffer = io.BytesIO()
        prepared = effdetseg.prepare_for_inference(m, "cpu")
        torch.onnx.export(prepared, torch.randn(1, 3, 64, 64), buffer, input_names=["image"], output_names=["logits"],
                          dynamo=False)
        return onnx.load_from_string(buffer.getvalue())

    with_heads, without = exported(loaded), exported(plain)
    assert [n.op_type for n in with_heads.graph.node] == [n.op_type for n in without.graph.node]
    assert [t.SerializeToString() for t in with_heads.graph.initializer] == [
        t.SerializeToString() for t in without.graph.initializer
    ]


def test_aux_heads_compose_from_the_command_line() -> None:
    from effdetseg.configs.compose import compose

    cfg = compose(["train.aux_heads.levels=[3,4,5]", "train.aux_heads.weight=0.25"])
    assert list(cfg.train.aux_heads.levels) == [3, 4, 5] and cfg.train.aux_heads.weight == 0.25
    assert list(compose([]).train.aux_heads.levels) == []


@pytest.mark.slow
def test_training_with_aux_heads_and_the_new_losses_writes_a_plain_model(tmp_path) -> None:
    """The trainer with aux heads, OHEM, median-frequency weights and a resume: last.pth keeps the
    heads' state for the resume, best.pth and the record hold the model alone."""
    from effdetseg.cli import main as cli_main

    tiny = [
        "train.model.backbone=mobilenetv3_small_050", "data.train_samples=4", "data.val_samples=2", "data.batch_size=2",
        "data.num_workers=0", "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64",
        "+train.model.overrides.bifpn_channels=16", "+train.model.overrides.head_channels=16", "train.progress=false",
        "validation.grid_images=1", "train.aux_heads.levels=[3,5]", "train.loss.class_weights=median_frequency",
        "train.loss.distribution._target_=effdetseg.engine.losses.OhemCrossEntropyLoss", "train.loss.distribution.min_kept=512",
        "train.clip_grad_norm=1.0", f"experiments_dir={tmp_path}", "experiment_name=aux",
    ]
    assert cli_main(["train", *tiny, "train.num_epochs=1"]) == 0
    run = tmp_path / "aux"
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["aux_heads"] is not None and not any(k.startswith("heads.") for k in last["model"])
    plain = effdetseg.create_model("efficientdet_d0_seg", num_classes=6, backbone="mobilenetv3_small_050",
                                   bifpn_channels=16, head_channels=16)
    assert set(effdetseg.load_model(run / "best.pth").state_dict()) == set(plain.state_dict())
    assert cli_main(["train", f"resume={run}", "train.num_epochs=2"]) == 0
    history = (run / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 2 and '"train_loss_aux"' in history[-1]
