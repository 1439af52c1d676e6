"""The training loop: epochs of (accumulated, mixed-precision, clipped) steps, EMA, validation,
checkpoints, logs and plots.

One ``Trainer`` per process; under torchrun each process drives one device, gradients are
averaged by DDP, the validation confusion matrix is summed over ranks and rank 0 writes files.
Validation runs a prepared copy of the model (``prepare_for_inference``: BatchNorm folded) through
the one inference path with the record's preprocessing, so it measures what ``predict`` and
``evaluate`` will output for the checkpoint it writes.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import __version__
from ..data import build_dataset, build_label_set
from ..data.cache import DecodedStore, cache_datasets
from ..data.check import class_pixels_per_image, coverage_problems, label_histogram
from ..deploy.inference import segment
from ..deploy.prepare import prepare_for_inference
from ..devices import slow_bf16_warning
from ..errors import EffdetsegError
from ..io.record import Architecture, ModelRecord, Preprocessing, Provenance, load_weights, read_model_file, unwrap, write_model_file
from ..io.files import write_text_atomic
from . import experiment as exp
from .budget import PhaseTimes, TimeBudget
from .builders import build_model, build_optimizer, build_scheduler, freeze_backbone_layers, steps_per_epoch
from .checkpoints import BEST, LAST, load_optimizer_state, load_training_state, rng_state, set_rng_state
from .distributed import DistributedContext, all_reduce_mean, broadcast_buffers, broadcast_floats
from .evaluate import evaluate
from .loaders import TrainLoader, derive_seed, plan_cpu, val_loader
from .auxiliary import attach_aux_heads, deep_supervision_loss
from .losses import build_loss
from .plan import PLAN_FILE
from .metrics import SegmentationMetrics


class TrainingDiverged(EffdetsegError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    experiment_dir: Path
    best_epoch: int
    best_source: str
    best_metrics: SegmentationMetrics
    class_names: tuple[str, ...]
    files: list[str]


@dataclass(frozen=True)
class EpochPosition:
    """How far into an epoch a mid-epoch checkpoint was written: batches (per process) and samples
    (all processes) trained on, and the running loss sums the epoch's record averages."""

    batches: int
    samples: int
    loss_sum: float
    parts_sum: dict[str, float]

    def to_state(self) -> dict[str, Any]:
        return {"batches": self.batches, "samples": self.samples, "loss_sum": self.loss_sum, "parts_sum": dict(self.parts_sum)}

    @classmethod
    def from_state(cls, state: Any) -> EpochPosition | None:
        if not state:
            return None
        return cls(int(state["batches"]), int(state["samples"]), float(state["loss_sum"]),
                   {str(k): float(v) for k, v in state["parts_sum"].items()})


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


def resolve_amp(train_cfg: DictConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler): fp16 + scaler on CUDA, bf16 on CPU by default."""
    if not train_cfg.amp:
        return None, False
    choice = train_cfg.amp_dtype
    if choice == "auto":
        choice = "float16" if device.type == "cuda" else "bfloat16"
    if choice == "float16" and device.type != "cuda":
        raise EffdetsegError("train.amp_dtype=float16 needs CUDA; use bfloat16 (or auto) on the CPU")
    dtype = torch.float16 if choice == "float16" else torch.bfloat16
    return dtype, dtype == torch.float16


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


def check_same_architecture(saved: Architecture, configured: Architecture, checkpoint: Path, config: Path) -> None:
    """A resumed run's weights must be those of the network its config builds (one error line)."""
    def key(arch: Architecture) -> dict[str, Any]:
        return {k: v for k, v in arch.config().items() if k not in ("backbone_pretrained", "pretrained")}

    if key(saved) != key(configured):
        changed = sorted(k for k in key(saved).keys() | key(configured).keys() if key(saved).get(k) != key(configured).get(k))
        detail = ", ".join(f"{k}: {key(saved).get(k)!r} in the weights, {key(configured).get(k)!r} in the config" for k in changed)
        raise EffdetsegError(
            f"resume: {checkpoint} does not hold the network {config} describes ({detail}); resume with the config "
            f"the run was trained with, or start a new run from these weights with train.model.weights={checkpoint}"
        )


class Trainer:
    def __init__(
        self, cfg: DictConfig, ctx: DistributedContext, experiment_dir: Path, resume: bool, command: list[str] | None = None,
        store: DecodedStore | None = None,
    ) -> None:
        # The clock of train.max_minutes starts here: setting up (decoding the cache, building the
        # model) is part of the run's time.
        self.budget = TimeBudget(cfg.train.max_minutes)
        self.cfg = cfg
        self.command = command
        self.ctx = ctx
        self.device = ctx.device
        self.dir = experiment_dir
        self.log = exp.Log(experiment_dir, ctx.is_main, hold=True)  # train.log is written once set up
        if cfg.get("plan") and not resume:
            self.log(str(cfg.plan.text))
            if ctx.is_main:
                write_text_atomic(experiment_dir / PLAN_FILE, json.dumps(OmegaConf.to_container(cfg.plan), indent=1) + "\n")
        self.progress = bool(cfg.train.progress) and ctx.is_main
        self.num_epochs = int(cfg.train.num_epochs)

        configure_determinism(bool(cfg.deterministic))
        seed_everything(int(cfg.seed) + ctx.rank)

        cached = cfg.data.cache == "ram"
        self.cpu = plan_cpu(self.device, cfg.train.threads, cfg.data.num_workers, cached, ctx.local_world_size)
        torch.set_num_threads(self.cpu.threads)

        self.labels = build_label_set(cfg.data)
        self.num_classes = int(cfg.train.model.num_classes)
        self.ignore_index = int(cfg.data.ignore_index)
        self.train_set = build_dataset(cfg.data, "train")
        self.val_set = build_dataset(cfg.data, "val", normalize=False)  # uint8: the inference path normalizes
        if cached:
            start = time.perf_counter()
            sets = cache_datasets({"train": self.train_set, "val": self.val_set}, ctx.local_world_size, self.cpu.threads, store)
            self.train_set, self.val_set = sets["train"], sets["val"]
            megabytes = sum(s.nbytes for s in sets.values()) / 2**20
            how = "by the training plan" if store is not None else f"in {time.perf_counter() - start:.1f}s"
            self.log(f"data.cache=ram: {len(self.train_set)} train + {len(self.val_set)} val samples decoded once "
                     f"({megabytes:.0f} MiB) {how}")
        self._check_class_coverage(exact=cached)
        self.preprocessing = training_preprocessing(cfg.data)

        self.model = build_model(cfg.train.model).to(self.device)
        self.channels_last = bool(cfg.train.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.grad_checkpointing:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise EffdetsegError(f"train.grad_checkpointing: {cfg.train.model.name} has no gradient checkpointing")
            self.model.set_grad_checkpointing(True)
        if ctx.is_distributed and self.device.type == "cuda" and cfg.train.sync_batchnorm:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.frozen = freeze_backbone_layers(self.model, int(cfg.train.freeze_backbone_stride))
        self.batch_norm_batch = int(cfg.data.batch_size) * (
            ctx.world_size if ctx.is_distributed and self.device.type == "cuda" and cfg.train.sync_batchnorm else 1
        )
        prep = cfg.data.preprocessing
        check_batch_norm_values(self.model, self.batch_norm_batch, (int(prep.resize_height), int(prep.resize_width)))
        ema_cfg = cfg.train.ema
        self.ema = ModelEmaV3(self.model, decay=float(ema_cfg.decay), use_warmup=bool(ema_cfg.warmup)) if ema_cfg.enabled else None
        # Training-only auxiliary heads sit beside the model (train.aux_heads): saved, validated and
        # exported is self.model alone; trained is the model with its heads.
        self.aux = attach_aux_heads(self.model, cfg.train.get("aux_heads"), self.num_classes)
        trainable: nn.Module = self.model if self.aux is None else self.aux.to(self.device)
        self.train_model: nn.Module = trainable
        if ctx.is_distributed:
            self.train_model = DistributedDataParallel(trainable, device_ids=[self.device] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)

        self.criterion = build_loss(
            cfg.train.loss, self.num_classes, lambda: class_pixels_per_image(self.train_set, self.num_classes)
        ).to(self.device)
        if self.aux is not None:
            self.criterion = deep_supervision_loss(self.criterion, self.aux, float(cfg.train.aux_heads.weight))
        self.optimizer = build_optimizer(cfg.train.optimizer, trainable, float(cfg.train.decoder_lr_scale))
        if cfg.train.model.optimizer_state and not resume:
            load_optimizer_state(self.optimizer, str(cfg.train.model.optimizer_state))

        self.train_loader = TrainLoader(self.train_set, int(cfg.data.batch_size), self.cpu.workers, int(cfg.seed), ctx)
        val_workers = self.cpu.workers if cfg.validation.num_workers == "auto" else int(cfg.validation.num_workers)
        self.val_loader = val_loader(self.val_set, int(cfg.validation.batch_size), val_workers, ctx)
        self.accumulation = int(cfg.train.loss.accumulation_iter)
        self.steps_per_epoch = steps_per_epoch(len(self.train_loader), self.accumulation)
        self.scheduler, self.schedule = build_scheduler(
            cfg.train.scheduler, self.optimizer, self.num_epochs, self.steps_per_epoch, time_budget=self.budget.enabled
        )
        self.amp_dtype, use_scaler = resolve_amp(cfg.train, self.device)
        warning = slow_bf16_warning(self.device, self.amp_dtype, "train.amp=true")
        if warning:
            self.log(warning)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.clip = cfg.train.clip_grad_norm
        # Reading a loss value makes the host wait for the device: on CUDA only every log_every steps.
        self.check_every = 1 if self.device.type == "cpu" else max(1, int(cfg.train.log_every))

        self.checkpoint_every_steps = int(cfg.train.checkpoint_every_steps)
        self.checkpoint_every_s = 60.0 * float(cfg.train.checkpoint_every_minutes)
        self.last_checkpoint_time = time.monotonic()

        self.start_epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None  # {"epoch", "source", "miou", "matrix"}
        self.history: list[dict] = []
        self.resume_position: EpochPosition | None = None  # where in start_epoch a mid-epoch checkpoint stopped
        self.validation_s: float | None = None  # the last validation's duration (the budget's reserve)
        self.stopped_at: EpochPosition | None = None  # where the time budget ended the last epoch
        if resume:
            self._restore()

        self.writer = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self.global_step if resume else None)
        self.log.commit()

    def _check_class_coverage(self, exact: bool) -> None:
        """Stop before training on masks that hide a class behind the ignore label (0/255 foreground
        masks); warn about classes without pixels when every mask is counted (a sample may miss
        rare classes)."""
        pixels = label_histogram(self.train_set, None if exact else 32)
        problems, warnings = coverage_problems(pixels, self.labels.names, "data (train)")
        if problems:
            raise EffdetsegError(problems[0])
        if exact:
            for warning in warnings:
                self.log(f"warning: {warning}")

    # ------------------------------------------------------------------ state

    def _restore(self) -> None:
        path = self.dir / LAST
        if not path.is_file():
            self.log(f"resume: {path} does not exist yet (stopped in the first epoch); starting from epoch 1")
            if self.ctx.is_main:
                self.history = exp.read_history(self.dir, 0)
            return
        file = load_training_state(path)
        state = file.training_state
        check_same_architecture(file.record.architecture, Architecture.of(self.model), path, self.dir / exp.CONFIG)
        load_weights(self.model, file.state_dict, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        if self.aux is not None and state.get("aux_heads") is not None:
            self.aux.heads.load_state_dict(state["aux_heads"])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best = state.get("best")
        self.budget.resume_from(float(state.get("budget_spent_s", 0.0)))
        rng = state["rng"]
        rng_list = rng if isinstance(rng, list) else [rng]
        position = EpochPosition.from_state(state.get("epoch_position"))
        if position is not None:
            # The order of an epoch is a function of (seed, epoch): the samples already trained on
            # are the first ones of it, with any number of processes.
            batch = self.train_loader.batch_size * self.ctx.world_size
            position = replace(position, batches=position.samples // batch)
            self.resume_position = position
        if len(rng_list) == self.ctx.world_size:
            set_rng_state(rng_list[self.ctx.rank])
        else:  # a different number of processes: seeded by (seed, epoch, rank) like the data order
            seed_everything(derive_seed(int(self.cfg.seed), self.start_epoch, self.ctx.rank))
        if self.ctx.is_main:
            self.history = exp.read_history(self.dir, self.start_epoch)
        where = f"epoch {self.start_epoch}" if position is None else f"batch {position.batches} of epoch {self.start_epoch + 1}"
        clock = f", {self.budget.elapsed() / 60:.1f} of {self.budget.seconds / 60:g} minutes used" if self.budget.enabled else ""
        self.log(f"resumed {self.dir} after {where} (optimizer step {self.global_step}{clock})")

    def _gather_rng(self) -> list[dict]:
        state = rng_state()
        if self.ctx.is_distributed:
            states: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(states, state)
            return states
        return [state]

    def _record(self, epoch: int, weights: str, metrics: SegmentationMetrics | None = None) -> ModelRecord:
        """The record of the weights being written (see :mod:`effdetseg.io.record`)."""
        from omegaconf import OmegaConf

        return ModelRecord(
            Architecture.of(self.model),
            self.preprocessing,
            self.labels,
            Provenance(
                data=str(self.cfg.data.name),
                epoch=epoch,
                global_step=self.global_step,
                weights=weights,
                metrics=metrics.to_dict(self.labels.names, with_matrix=True) if metrics is not None else None,
                config=OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                command=tuple(self.command) if self.command else None,
                effdetseg_version=__version__,
            ),
        )

    def _save_last(self, epoch: int, position: EpochPosition | None = None) -> None:
        """``last.pth`` after ``epoch`` complete epochs (and ``position`` into the next one)."""
        broadcast_buffers(self.model)  # collective: every rank takes part
        if self.ema is not None:
            broadcast_buffers(self.ema.module)
        rng = self._gather_rng()
        if not self.ctx.is_main:
            return
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema is not None else None,
            "aux_heads": self.aux.heads.state_dict() if self.aux is not None else None,
            "epoch": epoch,
            "global_step": self.global_step,
            "best": self.best,
            "rng": rng,
            "epoch_position": position.to_state() if position is not None else None,
            "budget_spent_s": self.budget.elapsed(),
        }
        write_model_file(self.dir / LAST, self._record(epoch, "model"), self.model.state_dict(), training_state)
        self.last_checkpoint_time = time.monotonic()

    def _save_best(self, module: nn.Module, epoch: int, source: str, metrics: SegmentationMetrics) -> None:
        if self.ctx.is_main:
            write_model_file(self.dir / BEST, self._record(epoch, source, metrics), unwrap(module).state_dict())

    # ------------------------------------------------------------------ loop

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _budget_state(self) -> tuple[float, bool]:
        """(elapsed fraction of the budget, training must stop): rank 0's clock on every rank, so all
        take the same learning rate and stop at the same step."""
        fraction, over = broadcast_floats([self.budget.fraction(), float(self.budget.training_over())], self.device)
        return fraction, bool(over)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch, or what the time budget leaves of it (``budget_over``: the budget ended it;
        ``stopped_early``: before its last batch, at ``self.stopped_at``)."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        parts_sum: dict[str, torch.Tensor] = {}
        skip = 0
        if self.resume_position is not None:  # a mid-epoch checkpoint of this epoch
            position = self.resume_position
            loss_sum += position.loss_sum
            parts_sum = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in position.parts_sum.items()}
            skip = position.batches
            self.resume_position = None
        loader = self.train_loader.epoch(epoch, skip)
        self.train_model.train()
        for layer in self.frozen:  # frozen layers keep their BatchNorm statistics too
            layer.eval()
        batches = len(self.train_loader)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        bar = tqdm(
            enumerate(loader, start=skip), initial=skip, total=batches, desc=self._epoch_label(epoch), leave=False,
            dynamic_ncols=True, disable=None if self.progress else True,  # None: a bar on terminals only, none in logs
        )
        times = PhaseTimes()
        trained, images_seen, stopped_early, budget_over, i = 0, 0, False, False, skip - 1
        self.stopped_at = None
        start = time.perf_counter()
        self.budget.pause()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in bar:
            images = batch["image"].to(self.device, non_blocking=True)
            masks = batch["mask"].to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            times.lap("data")
            sync = (i + 1) % self.accumulation == 0 or i + 1 == batches
            no_sync = self.train_model.no_sync() if self.ctx.is_distributed and not sync else nullcontext()
            with no_sync:
                with autocast:
                    try:
                        logits = self.train_model(images)
                    except ValueError as e:  # an augmentation made a crop smaller than the configured size
                        if "Expected more than 1 value per channel" not in str(e):
                            raise
                        check_batch_norm_values(self.model, self.batch_norm_batch, tuple(images.shape[-2:]))
                        raise
                times.lap("forward")
                loss, parts = self.criterion(logits, masks)
                times.lap("loss")
                # Micro-batches of an accumulated step may differ in size (the epoch's last step).
                group = min(self.accumulation, batches - (i // self.accumulation) * self.accumulation)
                self.scaler.scale(loss / group).backward()
                times.lap("backward")
            loss_sum += loss.detach()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            trained += 1
            images_seen += images.shape[0] * self.ctx.world_size
            if trained % self.check_every == 0 or i + 1 == batches:
                mean_loss = self._check_finite(loss_sum, epoch, i, batches) / (i + 1)
                times.lap("host sync")
                if self.progress:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self._lr():.2e}",
                                    img_s=f"{images_seen / max(elapsed, 1e-9):.1f}", refresh=False)
                    times.lap("logging")
            if sync:
                budget_over = self._optimizer_step(times)
                if budget_over or (i + 1 < batches and self._mid_epoch_checkpoint_due()):
                    samples = (i + 1) * self.train_loader.batch_size * self.ctx.world_size
                    position = EpochPosition(i + 1, samples, float(loss_sum), {k: float(v) for k, v in parts_sum.items()})
                    if budget_over:
                        if i + 1 < batches:  # the run's last.pth (written by fit) keeps the position
                            stopped_early, self.stopped_at = True, position
                        break
                    self._save_last(epoch, position)
                    times.lap("checkpoint")
        if self.scheduler is not None and not self.schedule.per_step and not stopped_early:
            self.scheduler.step()
        elapsed = time.perf_counter() - start
        done = max(i + 1, 1)
        result: dict[str, Any] = {
            "train_loss": float(loss_sum) / done,
            "steps": trained // self.accumulation if trained else 0,
            "images": images_seen,
            "images_per_s": images_seen / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "time_s": times.rounded(),
            "stopped_early": stopped_early,
            "budget_over": budget_over,
        }
        result.update({f"train_loss_{k}": float(v) / done for k, v in parts_sum.items()})
        return result

    def _epoch_label(self, epoch: int) -> str:
        if self.budget.enabled:
            return f"epoch {epoch + 1} ({self.budget.elapsed() / 60:.1f}/{self.budget.seconds / 60:g} min)"
        return f"epoch {epoch + 1}/{self.num_epochs}"

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, i: int, batches: int) -> float:
        """The epoch's loss sum so far (one host sync; under DDP the mean over ranks, so every rank
        takes the same decision); a NaN/inf loss stops the run."""
        value = float(all_reduce_mean(loss_sum)) if self.ctx.is_distributed else float(loss_sum)
        if math.isfinite(value):
            return value
        last = self.dir / LAST
        where = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"loss is {value} at epoch {epoch + 1}, batch {i + 1}/{batches} (optimizer step {self.global_step + 1}); stopped, "
            f"{where}. Try a lower train.optimizer.lr, train.clip_grad_norm=1.0 or train.amp=false"
        )

    def _mid_epoch_checkpoint_due(self) -> bool:
        """``train.checkpoint_every_steps`` / ``_minutes``; under DDP every rank takes rank 0's clock."""
        due = bool(self.checkpoint_every_steps) and self.global_step % self.checkpoint_every_steps == 0
        if self.checkpoint_every_s > 0:
            late = time.monotonic() - self.last_checkpoint_time >= self.checkpoint_every_s
            if self.ctx.is_distributed:
                late = bool(broadcast_floats([float(late)], self.device)[0])
            due = due or late
        return due

    def _optimizer_step(self, times: PhaseTimes) -> bool:
        """Clip, step, EMA, schedule; True when the time budget says training must stop now."""
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], float(self.clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        times.lap("optimizer")
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
            times.lap("EMA")
        stop = False
        if self.budget.enabled:
            self.budget.step_done()
            fraction, stop = self._budget_state()
            if self.schedule.follows_time:
                self.scheduler.set_time_fraction(fraction)  # type: ignore[union-attr]
        if self.scheduler is not None and self.schedule.per_step:
            self.scheduler.step()
        if self.writer is not None and self.global_step % max(1, int(self.cfg.train.log_every)) == 0:
            self.writer.add_scalar("train/lr", self._lr(), self.global_step)
        return stop

    def validate(self, module: nn.Module, name: str) -> SegmentationMetrics:
        """Metrics of ``module`` on the validation set, through the inference path of ``predict``;
        a prepared copy runs (the module being trained is not changed)."""
        matrix = evaluate(
            prepare_for_inference(module, self.device),
            self.val_loader,
            self.num_classes,
            self.preprocessing,
            ignore_index=self.ignore_index,
            amp_dtype=self.amp_dtype,
            progress=self.progress,
            description=f"validate ({name})",
        )
        return matrix.compute()

    def _estimate_finish_s(self) -> float:
        """Seconds the end of the run needs after its last step — validation of the model (and
        EMA), checkpoints, plots — from the last validation's duration, or before any from a timed
        pass over one validation image, with a margin."""
        validations = 2 if self.ema is not None else 1
        grid = min(int(self.cfg.validation.grid_images), len(self.val_set))
        if self.validation_s is not None:
            per_image = self.validation_s / max(1, validations * math.ceil(len(self.val_set) / self.ctx.world_size))
        else:
            prepared = prepare_for_inference(self.model, self.device)
            image = self.val_set[0]["image"]
            for _ in range(2):  # the second pass: the first also builds the kernels
                begin = time.perf_counter()
                segment(prepared, [image], self.preprocessing, amp_dtype=self.amp_dtype)
                per_image = time.perf_counter() - begin
        images = validations * math.ceil(len(self.val_set) / self.ctx.world_size) + grid
        return 1.25 * per_image * images + 5.0  # + checkpoints and plots

    def fit(self) -> TrainResult | None:
        names = self.labels.names
        if self.start_epoch == 0 and self.resume_position is None:
            length = (f"a time budget of {self.cfg.train.max_minutes:g} minutes (train.num_epochs is not used)" if self.budget.enabled
                      else f"{self.num_epochs} epochs")
            self.log(
                f"training {self.cfg.train.model.name} on {self.cfg.data.name}: {len(self.train_set)} train / "
                f"{len(self.val_set)} val images, {length}, {self.steps_per_epoch} steps an epoch, "
                f"device {self.device}" + (f" × {self.ctx.world_size} processes" if self.ctx.is_distributed else "")
                + f"; {self.cpu.threads} thread(s), {self.train_loader.loader.num_workers} data worker(s) ({self.cpu.why})"
            )
        if self.budget.enabled:
            from ..deploy.charts import pyplot

            pyplot()  # matplotlib's first import (~0.5 s) belongs to the setup, not to the reserved finish
            self.budget.reserve_s = broadcast_floats([self._estimate_finish_s()], self.device)[0]
            if self.budget.training_over():
                raise EffdetsegError(
                    f"train.max_minutes={self.cfg.train.max_minutes:g}: {self.budget.elapsed() / 60:.1f} minutes are used and the end "
                    f"of the run needs about {self.budget.reserve_s:.0f}s; raise train.max_minutes to train on"
                )
        epoch_step = int(self.cfg.validation.epoch_step)
        epoch = self.start_epoch
        while self.budget.enabled or epoch < self.num_epochs:
            stats = self.train_epoch(epoch)
            done = epoch if stats.pop("stopped_early") else epoch + 1  # complete epochs
            last = stats.pop("budget_over") if self.budget.enabled else done == self.num_epochs
            record: dict[str, Any] = {"epoch": epoch + 1, "global_step": self.global_step, "lr": self._lr(), **stats}
            if last or (epoch_step and done % epoch_step == 0 and done == epoch + 1):
                began = time.perf_counter()
                self._validate_epoch(epoch + 1, record)
                record["validation_s"] = self.validation_s = time.perf_counter() - began
                if self.budget.enabled and not last:
                    self.budget.reserve_s = broadcast_floats([self._estimate_finish_s()], self.device)[0]
            self._save_last(done, self.stopped_at)
            if self.ctx.is_main:
                self.history.append(record)
                exp.append_history(self.dir, record)
                self._log_epoch(record)
            if last:
                break
            epoch += 1
        if self.writer is not None:
            self.writer.close()
        if self.budget.enabled:
            self.log(f"the {self.cfg.train.max_minutes:g}-minute budget gave {self.global_step} optimizer steps "
                     f"({self.global_step / max(1, self.steps_per_epoch):.1f} epochs)")
        if not self.ctx.is_main:
            return None
        if self.best is None:
            raise EffdetsegError("no validation ran: nothing to report")
        best_metrics = SegmentationMetrics.from_matrix(self.best["matrix"])
        began = time.perf_counter()
        files = self._finish(best_metrics)
        if self.budget.enabled:
            self.log(f"finished after {self.budget.elapsed() / 60:.2f} of {self.cfg.train.max_minutes:g} minutes "
                     f"(plots and the prediction grid: {time.perf_counter() - began:.1f}s; reserved for the end: {self.budget.reserve_s:.0f}s)")
        return TrainResult(self.dir, int(self.best["epoch"]), str(self.best["source"]), best_metrics, tuple(names), files)

    def _validate_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        names = self.labels.names
        broadcast_buffers(self.model)
        if self.ema is not None:
            broadcast_buffers(self.ema.module)
        candidates = [("model", self.model, self.validate(self.model, "model"))]
        if self.ema is not None:
            candidates.append(("ema", self.ema.module, self.validate(self.ema.module, "EMA")))
        for source, _, metrics in candidates:
            record["val" if source == "model" else "val_ema"] = metrics.to_dict(names)
        score = lambda m: -1.0 if math.isnan(m.miou) else m.miou  # noqa: E731  (no labelled pixel: NaN)
        source, module, metrics = max(candidates, key=lambda c: score(c[2]))
        if self.best is None or score(metrics) > self.best["miou"]:
            self.best = {"epoch": epoch, "source": source, "miou": score(metrics), "matrix": metrics.matrix.cpu()}
            self._save_best(module, epoch, source, metrics)
        if self.writer is not None:
            for source, _, m in candidates:
                self.writer.add_scalar(f"val/miou_{source}", m.miou, self.global_step)
                self.writer.add_scalar(f"val/pixel_accuracy_{source}", m.pixel_accuracy, self.global_step)
            for name, iou in zip(names, candidates[0][2].iou):
                if not math.isnan(iou):
                    self.writer.add_scalar(f"val_class_iou/{name}", iou, self.global_step)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", record["train_loss"], self.global_step)
            self.writer.add_scalar("train/images_per_s", record["images_per_s"], self.global_step)
        of = "" if self.budget.enabled else f"/{self.num_epochs}"
        text = (
            f"epoch {record['epoch']:>3}{of}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.1f} img/s  {record['epoch_time_s']:.0f}s"
        )
        if record.get("val"):
            text += f"  val mIoU {_pct(record['val']['miou'])}"
        if record.get("val_ema"):
            text += f"  EMA {_pct(record['val_ema']['miou'])}"
        if self.best is not None:
            text += f"  best {_pct(self.best['miou'])} (epoch {self.best['epoch']}, {self.best['source']})"
        self.log(text)

    def _finish(self, best_metrics: SegmentationMetrics) -> list[str]:
        """Plots from the history and the best weights; the list of files written."""
        from . import plots

        names, colors = self.labels.names, self.labels.colors
        plots.plot_curves(self.history, self.dir / "curves.png")
        plots.plot_class_iou(
            names, best_metrics.iou, colors, self.dir / "per_class_iou.png",
            f"per-class IoU, best epoch {self.best['epoch']} ({self.best['source']}): mIoU {_pct(best_metrics.miou)}",
        )
        self.model.load_state_dict(read_model_file(self.dir / BEST).state_dict)
        self._prediction_grid(self.model, self.dir / "val_grid.png")
        return ["config.yaml", LAST, BEST, exp.METRICS, exp.LOG, "tensorboard/", "curves.png", "per_class_iou.png", "val_grid.png"]

    def _prediction_grid(self, module: nn.Module, path: Path) -> None:
        from . import plots

        count = min(int(self.cfg.validation.grid_images), len(self.val_set))
        if count <= 0:
            return
        items = [self.val_set[index] for index in range(count)]
        results = segment(prepare_for_inference(module, self.device), [item["image"] for item in items], self.preprocessing)
        plots.plot_prediction_grid(
            [item["image"].permute(1, 2, 0).numpy() for item in items],
            [item["mask"].numpy() for item in items],
            [result.labels.cpu().numpy() for result in results],
            [str(item["id"]) for item in items],
            self.labels,
            path,
        )


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
