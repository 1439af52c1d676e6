"""What a training run is made of, from its setup: the datasets, the model (as saved, as trained:
with its EMA copy, auxiliary heads, frozen layers, DDP and torch.compile), the optimizer and the
scheduler (``_target_`` nodes, allowed targets only).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ..configs.targets import check_target, instantiate
from ..data import build_dataset, build_label_set
from ..data.cache import DecodedStore, cache_datasets
from ..data.check import class_pixels_per_image, coverage_problems, label_histogram
from ..devices import slow_bf16_warning
from ..errors import EffdetsegError, first_line
from ..io.labels import LabelSet
from ..io.build import load_weights
from ..io.model_files import read_model_file
from ..io.record import SEGMENTATION_FAMILIES, unwrap
from ..models import create_model, is_model, list_models, model_family
from .auxiliary import DeepSupervision, attach_aux_heads, deep_supervision_loss
from .checkpoints import load_optimizer_state
from .distributed import DistributedContext
from .loaders import TrainLoader
from .losses import build_loss
from .schedulers import ScheduleKind, schedule_kind
from .setup import TrainSetup


@dataclass(frozen=True)
class TrainingData:
    """The class names and colours, the training set (augmented, normalized) and the validation set
    (uint8: the inference path normalizes it), decoded into memory when ``data.cache=ram``."""

    labels: LabelSet
    train: Dataset
    val: Dataset


def build_training_data(
    setup: TrainSetup, ctx: DistributedContext, threads: int, store: DecodedStore | None, log: Callable[[str], None]
) -> TrainingData:
    """The run's data; ``store``: what the training plan decoded already. Masks that hide a class
    behind the ignore label stop the run here (see ``check_class_coverage``)."""
    labels = build_label_set(setup.data)
    train_set = build_dataset(setup.data, "train")
    val_set = build_dataset(setup.data, "val", normalize=False)  # uint8: the inference path normalizes
    if setup.cache_in_ram:
        start = time.perf_counter()
        sets = cache_datasets({"train": train_set, "val": val_set}, ctx.local_world_size, threads, store)
        train_set, val_set = sets["train"], sets["val"]
        megabytes = sum(s.nbytes for s in sets.values()) / 2**20
        how = "by the training plan" if store is not None else f"in {time.perf_counter() - start:.1f}s"
        log(f"data.cache=ram: {len(train_set)} train + {len(val_set)} val samples decoded once ({megabytes:.0f} MiB) {how}")
    check_class_coverage(train_set, labels, exact=setup.cache_in_ram, log=log)
    return TrainingData(labels, train_set, val_set)


def check_class_coverage(train_set: Dataset, labels: LabelSet, exact: bool, log: Callable[[str], None]) -> None:
    """Stop before training on masks that hide a class behind the ignore label (0/255 foreground
    masks); warn about classes without pixels when every mask is counted (a sample may miss
    rare classes)."""
    pixels = label_histogram(train_set, None if exact else 32)
    problems, warnings = coverage_problems(pixels, labels.names, "data (train)")
    if problems:
        raise EffdetsegError(problems[0])
    if exact:
        for warning in warnings:
            log(f"warning: {warning}")


@dataclass(frozen=True)
class TrainingModel:
    """The network of a run. ``model`` is what is saved, validated and exported; ``trainable`` is
    the model with its training-only auxiliary heads (``aux``), if any — what the optimizer gets;
    ``train_model`` is that wrapped by DDP and torch.compile as configured — what the loop calls.
    ``frozen``: layers kept in eval mode; ``batch_norm_batch``: the batch BatchNorm sees."""

    model: nn.Module
    trainable: nn.Module
    train_model: nn.Module
    ema: ModelEmaV3 | None
    aux: DeepSupervision | None
    frozen: list[nn.Module]
    batch_norm_batch: int


def build_training_model(setup: TrainSetup, ctx: DistributedContext) -> TrainingModel:
    """``train.model`` on this process's device, laid out and wrapped as the ``train`` keys say."""
    device = ctx.device
    model = build_model(setup.model).to(device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if setup.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise EffdetsegError(f"train.grad_checkpointing: {setup.model_name} has no gradient checkpointing")
        model.set_grad_checkpointing(True)
    sync_batchnorm = ctx.is_distributed and device.type == "cuda" and setup.sync_batchnorm
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    frozen = freeze_backbone_layers(model, setup.freeze_backbone_stride)
    batch_norm_batch = setup.batch_size * (ctx.world_size if sync_batchnorm else 1)
    check_batch_norm_values(model, batch_norm_batch, setup.crop)
    ema = ModelEmaV3(model, decay=setup.ema.decay, use_warmup=setup.ema.warmup) if setup.ema is not None else None
    # Training-only auxiliary heads sit beside the model (train.aux_heads): saved, validated and
    # exported is the model alone; trained is the model with its heads.
    aux = attach_aux_heads(model, setup.aux_heads, setup.num_classes)
    trainable: nn.Module = model if aux is None else aux.to(device)
    train_model: nn.Module = trainable
    if ctx.is_distributed:
        train_model = DistributedDataParallel(trainable, device_ids=[device] if device.type == "cuda" else None)
    if setup.compile:
        train_model = torch.compile(train_model)
    return TrainingModel(model, trainable, train_model, ema, aux, frozen, batch_norm_batch)


@dataclass(frozen=True)
class Optimization:
    """How a run learns: the loss (with the auxiliary heads' term), the optimizer, the training
    loader and the optimizer steps an epoch, the learning-rate schedule and how the loop steps it,
    the autocast dtype (None: full precision) and the gradient scaler."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: TrainLoader
    steps_per_epoch: int
    scheduler: Any | None
    schedule: ScheduleKind
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler


def build_optimization(
    setup: TrainSetup, net: TrainingModel, train_set: Dataset, workers: int, ctx: DistributedContext, *,
    time_budget: bool, resume: bool, log: Callable[[str], None],
) -> Optimization:
    """The optimization of ``net`` on ``train_set``; a new run starts its optimizer from
    ``train.model.optimizer_state`` when set (a resumed one from its checkpoint, later)."""
    device = ctx.device
    criterion = build_loss(setup.loss, setup.num_classes, lambda: class_pixels_per_image(train_set, setup.num_classes)).to(device)
    if net.aux is not None:
        criterion = deep_supervision_loss(criterion, net.aux, setup.aux_weight)
    optimizer = build_optimizer(setup.optimizer, net.trainable, setup.decoder_lr_scale)
    if setup.optimizer_state and not resume:
        load_optimizer_state(optimizer, setup.optimizer_state)
    train_loader = TrainLoader(train_set, setup.batch_size, workers, setup.seed, ctx)
    steps = steps_per_epoch(len(train_loader), setup.accumulation)
    scheduler, schedule = build_scheduler(setup.scheduler, optimizer, setup.num_epochs, steps, time_budget=time_budget)
    amp_dtype, use_scaler = setup.precision(device)
    warning = slow_bf16_warning(device, amp_dtype, "train.amp=true")
    if warning:
        log(warning)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return Optimization(criterion, optimizer, train_loader, steps, scheduler, schedule, amp_dtype, scaler)


def check_batch_norm_values(model: nn.Module, batch: int, size: tuple[int, int]) -> None:
    """Refuse, with the smallest batch and crop that work, a training batch whose coarsest level
    gives BatchNorm a single value per channel (batch 1 and an input padded to one 128-px cell: P7 is 1×1)."""
    multiple = int(getattr(unwrap(model), "input_multiple", 1))
    height, width = size
    if batch * math.ceil(height / multiple) * math.ceil(width / multiple) > 1:
        return
    raise EffdetsegError(
        f"data.batch_size={batch} with {height}×{width} training crops: BatchNorm at the coarsest level (stride {multiple}) "
        f"would see one value per channel; use data.batch_size=2 or more, or crops larger than {multiple} px "
        f"(data.preprocessing.resize_height/resize_width ≥ {multiple + 1})"
    )



def build_model(model_cfg: DictConfig) -> nn.Module:
    """``train.model``: the variant, its backbone and overrides, then optional whole-model weights."""
    name = str(model_cfg.name)
    if not is_model(name) or model_family(name) not in SEGMENTATION_FAMILIES:
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
