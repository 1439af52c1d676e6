"""Model, optimizer and scheduler from the ``train`` config (``_target_`` nodes, allowed targets only)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from torch import nn

from ..io.record import SEGMENTATION_FAMILIES, load_weights, read_model_file
from ..configs.targets import check_target, instantiate
from ..errors import EffdetsegError, first_line
from ..models import create_model, is_model, model_family
from .schedulers import ScheduleKind, schedule_kind



def build_model(model_cfg: DictConfig) -> nn.Module:
    """``train.model``: the variant, its backbone and overrides, then optional whole-model weights."""
    name = str(model_cfg.name)
    if not is_model(name) or model_family(name) not in SEGMENTATION_FAMILIES:
        from ..models import list_models

        choices = [n for n in list_models() if model_family(n) in SEGMENTATION_FAMILIES]
        raise EffdetsegError(f"train.model.name: {name!r} is not a segmentation model; choose from {', '.join(choices)}")
    overrides = model_cfg.get("overrides")
    kwargs: dict[str, Any] = dict(OmegaConf.to_container(overrides, resolve=True)) if overrides else {}
    if model_cfg.get("backbone"):
        kwargs["backbone"] = str(model_cfg.backbone)
    pretrained = model_cfg.get("backbone_pretrained")
    if isinstance(pretrained, str):
        if pretrained.lower() in ("true", "false", "auto"):
            pretrained = pretrained.lower() != "false"
        elif not Path(pretrained).expanduser().is_file():
            raise EffdetsegError(f"train.model.backbone_pretrained: {pretrained} is not a file (use true, false or a weights file)")
        else:
            pretrained = str(Path(pretrained).expanduser())
    if pretrained:
        kwargs["backbone_pretrained"] = pretrained
    try:
        model = create_model(name, num_classes=int(model_cfg.num_classes), **kwargs)
    except EffdetsegError as e:
        raise EffdetsegError(f"train.model.backbone_pretrained: {e}") from None
    except (TypeError, ValueError) as e:
        raise EffdetsegError(f"train.model: {e}") from None
    except Exception as e:  # hub downloads without internet, missing timm weights, …
        if pretrained is True:
            raise EffdetsegError(
                f"train.model.backbone_pretrained={model_cfg.get('backbone_pretrained')}: could not fetch the backbone's weights "
                f"({first_line(e, with_type=True)}); pass a local weights file "
                f"(train.model.backbone_pretrained=PATH) or train from scratch (train.model.backbone_pretrained=false)"
            ) from None
        raise
    if model_cfg.get("weights"):
        weights = Path(str(model_cfg.weights)).expanduser()
        if not weights.is_file():
            raise EffdetsegError(f"train.model.weights: {weights} not found")
        load_weights(model, read_model_file(weights).state_dict, weights)
    return model


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module, decoder_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``train.optimizer`` with weight decay on conv/linear weights only (not norms and biases).

    ``decoder_lr_scale``: everything but ``model.backbone`` (BiFPN, head: randomly initialised)
    learns at ``lr × decoder_lr_scale``, the backbone (usually pretrained) at ``lr``.
    """
    weight_decay = float(optimizer_cfg.get("weight_decay", 0.0) or 0.0)
    params = param_groups_weight_decay(model, weight_decay=weight_decay)
    if decoder_lr_scale != 1.0:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise EffdetsegError(f"train.decoder_lr_scale: {type(model).__name__} has no .backbone to tell apart")
        params = _split_decoder_groups(params, backbone, float(optimizer_cfg.lr) * decoder_lr_scale)
    # _partial_: Hydra would wrap the list of parameter groups into a DictConfig.
    build = instantiate(optimizer_cfg, "train.optimizer", _partial_=True)
    try:
        return build(params)
    except Exception as e:
        raise EffdetsegError(f"train.optimizer ({optimizer_cfg.get('_target_')}): {first_line(e.__cause__ or e)}") from None


def _split_decoder_groups(groups: list[dict], backbone: nn.Module, decoder_lr: float) -> list[dict]:
    backbone_ids = {id(p) for p in backbone.parameters()}
    split = []
    for group in groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        own = [p for p in group["params"] if id(p) in backbone_ids]
        new = [p for p in group["params"] if id(p) not in backbone_ids]
        split += [{"params": own, **rest}] if own else []
        split += [{"params": new, **rest, "lr": decoder_lr}] if new else []
    return split


def freeze_backbone_layers(model: nn.Module, stride: int) -> list[nn.Module]:
    """``train.freeze_backbone_stride``: the backbone's layers up to its stride-``stride`` output stop
    learning (no gradients: their backward pass is skipped). Returned so the trainer keeps them in
    eval mode, which also fixes their BatchNorm statistics, as detectron2's ``FREEZE_AT`` and
    mmsegmentation's ``frozen_stages`` do. ``stride`` 0: nothing is frozen."""
    if not stride:
        return []
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "layers_through_stride"):
        raise EffdetsegError(f"train.freeze_backbone_stride: {type(model).__name__} has no timm backbone to freeze")
    try:
        layers = backbone.layers_through_stride(stride)
    except ValueError as e:
        raise EffdetsegError(f"train.freeze_backbone_stride: {e}") from None
    for layer in layers:
        layer.requires_grad_(False)
    return layers


def build_scheduler(
    scheduler_cfg: DictConfig | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    time_budget: bool = False,
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, ScheduleKind]:
    """``train.scheduler`` and how the loop steps it (see :mod:`effdetseg.engine.schedulers`).

    Under a ``time_budget`` (``train.max_minutes``) a scheduler that needs the run's length must
    follow the clock instead; one that cannot is refused with one line.
    """
    if scheduler_cfg is None or scheduler_cfg.get("_target_") is None:
        return None, ScheduleKind(per_step=False, run_length=False)
    from hydra.utils import get_class

    name = check_target(str(scheduler_cfg._target_), "train.scheduler")
    try:
        target = get_class(name)
    except Exception as e:
        raise EffdetsegError(f"train.scheduler._target_: {first_line(e.__cause__ or e)}") from None
    kind = schedule_kind(target)
    if time_budget and kind.run_length and not kind.follows_time:
        raise EffdetsegError(
            f"train.scheduler: {name} needs the run's length in steps, which train.max_minutes does not fix; use "
            "effdetseg.engine.schedulers.WarmupCosineLR or WarmupPolyLR (they follow the elapsed time), a per-epoch "
            "scheduler, or train.num_epochs instead of train.max_minutes"
        )
    extra: dict[str, Any] = {"optimizer": optimizer}
    if kind.run_length:
        extra.update(epochs=epochs, steps_per_epoch=steps_per_epoch)
    return instantiate(scheduler_cfg, "train.scheduler", **extra), kind


def steps_per_epoch(batches: int, accumulation: int) -> int:
    return math.ceil(batches / accumulation)
