"""What a training run is set to do, read once from the composed config (:mod:`effdetseg.configs`).

``TrainSetup.from_config(cfg)`` turns the keys the training loop, its checkpoints and its
validation read — ``train.*``, ``data.*``, ``validation.*``, ``seed``, ``deterministic`` and the
training plan — into one frozen, typed value; the trainer reads that instead of the config. The
sections a builder takes whole (the data preset for the datasets and labels, ``train.model``,
``train.loss``, ``train.optimizer``, ``train.scheduler``, ``train.aux_heads``) travel as they are,
and the whole config stays with it for the record's provenance. The config was checked against
the schema (:mod:`effdetseg.configs.schema`) when it was composed, so the conversions here cannot
fail on a user's value.

Also here: how the process is prepared for the run (determinism, seeds) and the numeric precision
it trains in.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import EffdetsegError
from ..io.record import Preprocessing

AUTO = "auto"


@dataclass(frozen=True)
class EmaSetup:
    """``train.ema`` when enabled: timm's ``ModelEmaV3`` decay and its decay warm-up."""

    decay: float
    warmup: bool


@dataclass(frozen=True)
class TrainSetup:
    """Every setting of a training run, typed (see the module's docstring for what is not converted)."""

    config: DictConfig  # the whole config: the record's provenance stores it, resolved
    plan: dict[str, Any] | None  # the training plan (engine/plan/) a new run prints and saves, if one was made
    # the run
    seed: int
    deterministic: bool
    num_epochs: int
    max_minutes: float | None  # a time budget for the whole run; num_epochs is then not used
    threads: int | str  # a number or "auto" (engine/loaders.plan_cpu decides)
    progress: bool
    log_every: int
    # the data
    data: DictConfig  # the preset: datasets and labels are built from it
    data_name: str
    num_classes: int
    ignore_index: int
    batch_size: int
    crop: tuple[int, int]  # (height, width) of the training samples
    cache_in_ram: bool
    data_workers: int | str
    preprocessing: Preprocessing  # what the record says inference does, and what validation does
    # the model
    model: DictConfig  # train.model: builders.build_model
    model_name: str
    channels_last: bool
    grad_checkpointing: bool
    sync_batchnorm: bool
    compile: bool
    freeze_backbone_stride: int
    ema: EmaSetup | None
    aux_heads: DictConfig | None  # train.aux_heads: auxiliary.attach_aux_heads checks it
    aux_weight: float
    # the optimisation
    loss: DictConfig
    optimizer: DictConfig
    scheduler: DictConfig | None
    decoder_lr_scale: float
    optimizer_state: str | None  # a file to start the optimizer from (a new run only)
    accumulation: int  # micro-batches per optimizer step
    clip_grad_norm: float | None
    amp: bool
    amp_dtype: str  # auto, bfloat16 or float16
    # checkpoints inside an epoch (0: at epoch ends only)
    checkpoint_every_steps: int
    checkpoint_every_s: float
    # validation
    validation_epoch_step: int  # every N epochs and after the last; 0: after the last only
    validation_batch_size: int
    validation_workers: int | None  # None: as many as the training loader's
    grid_images: int  # validation images in val_grid.png

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSetup:
        train, data, validation = cfg.train, cfg.data, cfg.validation
        aux = train.get("aux_heads")
        plan = cfg.get("plan")
        return cls(
            config=cfg,
            plan=OmegaConf.to_container(plan) if plan else None,  # type: ignore[arg-type]
            seed=int(cfg.seed),
            deterministic=bool(cfg.deterministic),
            num_epochs=int(train.num_epochs),
            max_minutes=None if train.max_minutes is None else float(train.max_minutes),
            threads=train.threads,
            progress=bool(train.progress),
            log_every=int(train.log_every),
            data=data,
            data_name=str(data.name),
            num_classes=int(train.model.num_classes),
            ignore_index=int(data.ignore_index),
            batch_size=int(data.batch_size),
            crop=(int(data.preprocessing.resize_height), int(data.preprocessing.resize_width)),
            cache_in_ram=data.cache == "ram",
            data_workers=data.num_workers,
            preprocessing=training_preprocessing(data),
            model=train.model,
            model_name=str(train.model.name),
            channels_last=bool(train.channels_last),
            grad_checkpointing=bool(train.grad_checkpointing),
            sync_batchnorm=bool(train.sync_batchnorm),
            compile=bool(train.compile),
            freeze_backbone_stride=int(train.freeze_backbone_stride),
            ema=EmaSetup(float(train.ema.decay), bool(train.ema.warmup)) if train.ema.enabled else None,
            aux_heads=aux,
            aux_weight=float(aux.get("weight", 0.4)) if aux else 0.0,
            loss=train.loss,
            optimizer=train.optimizer,
            scheduler=train.scheduler,
            decoder_lr_scale=float(train.decoder_lr_scale),
            optimizer_state=str(train.model.optimizer_state) if train.model.optimizer_state else None,
            accumulation=int(train.loss.accumulation_iter),
            clip_grad_norm=float(train.clip_grad_norm) if train.clip_grad_norm else None,
            amp=bool(train.amp),
            amp_dtype=str(getattr(train.amp_dtype, "value", train.amp_dtype)),
            checkpoint_every_steps=int(train.checkpoint_every_steps),
            checkpoint_every_s=60.0 * float(train.checkpoint_every_minutes),
            validation_epoch_step=int(validation.epoch_step),
            validation_batch_size=int(validation.batch_size),
            validation_workers=None if validation.num_workers == AUTO else int(validation.num_workers),
            grid_images=int(validation.grid_images),
        )

    def precision(self, device: torch.device) -> tuple[torch.dtype | None, bool]:
        """(autocast dtype or None, use a GradScaler): fp16 + scaler on CUDA, bf16 on CPU by default."""
        if not self.amp:
            return None, False
        choice = self.amp_dtype
        if choice == AUTO:
            choice = "float16" if device.type == "cuda" else "bfloat16"
        if choice == "float16" and device.type != "cuda":
            raise EffdetsegError("train.amp_dtype=float16 needs CUDA; use bfloat16 (or auto) on the CPU")
        dtype = torch.float16 if choice == "float16" else torch.bfloat16
        return dtype, dtype == torch.float16


def training_preprocessing(data_cfg: DictConfig) -> Preprocessing:
    """The record's preprocessing of a training run: the training size (or ``inference_size``), the augmentation preset's
    resize mode for inference (``data.augmentation.inference_resize``) and ``data.normalize``."""
    prep = data_cfg.preprocessing
    inference = prep.get("inference_size")
    return Preprocessing(
        size=(int(inference), int(inference)) if inference else (int(prep.resize_height), int(prep.resize_width)),
        resize=data_cfg.augmentation.inference_resize,
        mean=tuple(float(v) for v in data_cfg.normalize.mean),
        std=tuple(float(v) for v in data_cfg.normalize.std),
    )


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. 2-D NLL loss) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
