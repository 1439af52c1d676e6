"""Training checkpoints: everything an exact resume needs, in a model file any reader understands.

``last.pth`` = the model record and weights (:mod:`effdetseg.io.record`) plus the training state:
``optimizer``, ``scheduler``, ``scaler``, ``ema`` (weights), ``aux_heads``, ``epoch``,
``global_step``, ``best``, ``rng`` (every process's generator states), ``epoch_position`` (a
mid-epoch checkpoint's place in its epoch) and ``budget_spent_s`` (the time budget's clock).
``best.pth`` = the best validated weights (model or EMA) with a record whose provenance holds their
metrics. Both are written atomically, so a kill -9 at any moment leaves the previous file intact;
only tensors, numbers, strings, lists and dicts are stored, so they load with ``weights_only=True``.

``Checkpoints`` writes both for the trainer and restores ``last.pth`` into its parts on resume.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from torch import nn

from .._version import __version__
from ..errors import EffdetsegError
from ..io.labels import LabelSet
from ..io.build import load_weights
from ..io.model_files import ModelFile, read_model_file, read_torch_file, write_model_file
from ..io.record import Architecture, ModelRecord, Provenance, unwrap
from .auxiliary import DeepSupervision
from .budget import TimeBudget
from .distributed import DistributedContext, broadcast_buffers, broadcast_floats
from .experiment import BEST, CONFIG, LAST
from .loaders import derive_seed
from .metrics import SegmentationMetrics
from .setup import TrainSetup, seed_everything

TRAINING_STATE = ("optimizer", "epoch", "global_step", "rng")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as weights_only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: Path) -> ModelFile:
    """A ``last.pth`` written by this trainer (or by effdetseg 0.1.0); errors name the file and what is missing."""
    if not path.is_file():
        raise EffdetsegError(f"{path}: no checkpoint to resume from")
    file = read_model_file(path)
    missing = [key for key in TRAINING_STATE if key not in file.training_state]
    if file.record is None or missing:
        raise EffdetsegError(f"{path}: not a training checkpoint (missing {', '.join(missing) or 'the model record'})")
    return file


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """``train.model.optimizer_state``: a training checkpoint's optimizer, or a bare optimizer state dict."""
    obj = read_torch_file(path, "train.model.optimizer_state file")
    state = obj.get("optimizer", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "param_groups" not in state:
        raise EffdetsegError(f"train.model.optimizer_state: {path} holds no optimizer state")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise EffdetsegError(f"train.model.optimizer_state: {path} does not fit this model's optimizer ({e})") from None


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


@dataclass
class EpochTally:
    """An epoch's running sums: losses (on the device: reading them makes the host wait), batches
    trained by this process and images by all. A mid-epoch checkpoint saves them as an
    ``EpochPosition``, from which the resumed epoch starts counting again."""

    loss_sum: torch.Tensor
    parts_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    trained: int = 0
    images: int = 0

    @classmethod
    def starting_at(cls, position: EpochPosition | None, device: torch.device) -> EpochTally:
        tally = cls(torch.zeros((), dtype=torch.float64, device=device))
        if position is not None:
            tally.loss_sum += position.loss_sum
            tally.parts_sum = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in position.parts_sum.items()}
        return tally

    def position(self, batches: int, samples: int) -> EpochPosition:
        return EpochPosition(batches, samples, float(self.loss_sum), {k: float(v) for k, v in self.parts_sum.items()})


@dataclass(frozen=True)
class Best:
    """The best validation so far: its epoch, the weights that gave it (``model`` or ``ema``), their
    mIoU (−1 when no pixel was labelled, so that any later score beats it) and confusion matrix."""

    epoch: int
    source: str
    miou: float
    matrix: torch.Tensor

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "source": self.source, "miou": self.miou, "matrix": self.matrix}

    @classmethod
    def from_state(cls, state: Any) -> Best | None:
        if not state:
            return None
        return cls(int(state["epoch"]), str(state["source"]), float(state["miou"]), state["matrix"])


@dataclass(frozen=True)
class TrainingParts:
    """The objects whose state ``last.pth`` holds: ``model`` (the file's weights and record), the
    optimizer, the learning-rate schedule, the gradient scaler, the EMA copy and the auxiliary heads."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    aux: DeepSupervision | None


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: after ``epoch`` complete epochs and ``global_step`` optimizer
    steps (``position`` into the next epoch for a mid-epoch checkpoint), with its best validation."""

    epoch: int
    global_step: int
    best: Best | None
    position: EpochPosition | None


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


def gather_rng(ctx: DistributedContext) -> list[dict[str, Any]]:
    """Every process's generator states, in rank order (a collective under DDP)."""
    state = rng_state()
    if ctx.is_distributed:
        states: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(states, state)
        return states
    return [state]


class Checkpoints:
    """``last.pth`` and ``best.pth`` of one run's folder: every process takes part in the collectives
    (buffers, generator states), rank 0 writes. The records say what the weights are: the setup's
    preprocessing and data, the run's ``labels``, the resolved config and the ``command`` line."""

    def __init__(
        self, directory: Path, ctx: DistributedContext, parts: TrainingParts, setup: TrainSetup, labels: LabelSet,
        command: list[str] | None,
    ) -> None:
        self.dir = directory
        self.ctx = ctx
        self.parts = parts
        self.setup = setup
        self.labels = labels
        self.command = command
        self.written_at = time.monotonic()  # the clock of train.checkpoint_every_minutes

    def record(self, epoch: int, global_step: int, weights: str, metrics: SegmentationMetrics | None = None) -> ModelRecord:
        """The record of the weights being written (see :mod:`effdetseg.io.record`)."""
        return ModelRecord(
            Architecture.of(self.parts.model),
            self.setup.preprocessing,
            self.labels,
            Provenance(
                data=self.setup.data_name,
                epoch=epoch,
                global_step=global_step,
                weights=weights,
                metrics=metrics.to_dict(self.labels.names, with_matrix=True) if metrics is not None else None,
                config=OmegaConf.to_container(self.setup.config, resolve=True, enum_to_str=True),
                command=tuple(self.command) if self.command else None,
                effdetseg_version=__version__,
            ),
        )

    def due(self, global_step: int) -> bool:
        """A mid-epoch ``last.pth`` is due (``train.checkpoint_every_steps`` / ``_minutes``); under DDP
        every rank takes rank 0's clock."""
        every_steps, every_s = self.setup.checkpoint_every_steps, self.setup.checkpoint_every_s
        due = bool(every_steps) and global_step % every_steps == 0
        if every_s > 0:
            late = time.monotonic() - self.written_at >= every_s
            if self.ctx.is_distributed:
                late = bool(broadcast_floats([float(late)], self.ctx.device)[0])
            due = due or late
        return due

    def save_last(
        self, epoch: int, global_step: int, best: Best | None, position: EpochPosition | None, budget_spent_s: float
    ) -> None:
        """``last.pth`` after ``epoch`` complete epochs (and ``position`` into the next one)."""
        parts = self.parts
        broadcast_buffers(parts.model)  # collective: every rank takes part
        if parts.ema is not None:
            broadcast_buffers(parts.ema.module)
        rng = gather_rng(self.ctx)
        if not self.ctx.is_main:
            return
        training_state = {
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
            "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else None,
            "ema": {k: v.detach().cpu() for k, v in parts.ema.module.state_dict().items()} if parts.ema is not None else None,
            "aux_heads": parts.aux.heads.state_dict() if parts.aux is not None else None,
            "epoch": epoch,
            "global_step": global_step,
            "best": best.to_state() if best is not None else None,
            "rng": rng,
            "epoch_position": position.to_state() if position is not None else None,
            "budget_spent_s": budget_spent_s,
        }
        write_model_file(self.dir / LAST, self.record(epoch, global_step, "model"), parts.model.state_dict(), training_state)
        self.written_at = time.monotonic()

    def save_best(self, module: nn.Module, epoch: int, global_step: int, source: str, metrics: SegmentationMetrics) -> None:
        """``best.pth``: ``module`` (the model or its EMA copy) with a record holding its metrics."""
        if self.ctx.is_main:
            write_model_file(self.dir / BEST, self.record(epoch, global_step, source, metrics), unwrap(module).state_dict())

    def restore(self, budget: TimeBudget, log: Callable[[str], None]) -> Resumed | None:
        """Load ``last.pth`` into the parts, this process's generators and the ``budget``'s clock;
        None when there is none yet (the run stopped in its first epoch)."""
        path = self.dir / LAST
        if not path.is_file():
            log(f"resume: {path} does not exist yet (stopped in the first epoch); starting from epoch 1")
            return None
        file = load_training_state(path)
        state = file.training_state
        check_same_architecture(file.record.architecture, Architecture.of(self.parts.model), path, self.dir / CONFIG)
        load_weights(self.parts.model, file.state_dict, path)
        self._load_states(state)
        epoch = int(state["epoch"])
        position = EpochPosition.from_state(state.get("epoch_position"))
        if position is not None:
            # The order of an epoch is a function of (seed, epoch): the samples already trained on
            # are the first ones of it, with any number of processes.
            position = replace(position, batches=position.samples // (self.setup.batch_size * self.ctx.world_size))
        budget.resume_from(float(state.get("budget_spent_s", 0.0)))
        rng = state["rng"]
        rng_list = rng if isinstance(rng, list) else [rng]
        if len(rng_list) == self.ctx.world_size:
            set_rng_state(rng_list[self.ctx.rank])
        else:  # a different number of processes: seeded by (seed, epoch, rank) like the data order
            seed_everything(derive_seed(self.setup.seed, epoch, self.ctx.rank))
        resumed = Resumed(epoch, int(state["global_step"]), Best.from_state(state.get("best")), position)
        where = f"epoch {epoch}" if position is None else f"batch {position.batches} of epoch {epoch + 1}"
        clock = f", {budget.elapsed() / 60:.1f} of {budget.seconds / 60:g} minutes used" if budget.enabled else ""
        log(f"resumed {self.dir} after {where} (optimizer step {resumed.global_step}{clock})")
        return resumed

    def _load_states(self, state: dict[str, Any]) -> None:
        parts = self.parts
        parts.optimizer.load_state_dict(state["optimizer"])
        if parts.scheduler is not None and state.get("scheduler") is not None:
            parts.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        if parts.ema is not None and state.get("ema") is not None:
            parts.ema.module.load_state_dict(state["ema"])
        if parts.aux is not None and state.get("aux_heads") is not None:
            parts.aux.heads.load_state_dict(state["aux_heads"])
