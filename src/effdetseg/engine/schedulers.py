"""Learning-rate schedules, and when the training loop steps them.

Every scheduler declares its stepping (as timm's ``step``/``step_update``): ``ScheduleKind.per_step``
schedulers are stepped after every optimizer step, the others once per epoch; ``run_length``
schedulers are constructed with ``epochs`` and ``steps_per_epoch``. effdetseg's schedulers carry
their kind as a class attribute; torch's are declared in ``TORCH_SCHEDULE_KINDS`` (OneCycleLR and
CyclicLR per step, everything else — the original's ExponentialLR, StepLR, … — per epoch). A
scheduler class of your own can declare ``kind = ScheduleKind(per_step=True, run_length=True)``.

``WarmupPolyLR`` and ``WarmupCosineLR``: linear warm-up from ``warmup_factor × lr`` over
``warmup_epochs`` (or ``warmup_fraction`` of the run), then poly (DeepLab's ``(1 − progress)^power``)
or half-cosine decay down to ``min_lr_ratio × lr``. Their state holds the position in the schedule;
its shape (length, warm-up, power) comes from the config on every start, so
``resume=… train.num_epochs=40`` stretches the schedule of a run that was to stop earlier.

Under a time budget (``train.max_minutes``) the run's length in steps is not known in advance:
schedulers that declare ``follows_time`` (effdetseg's) take the elapsed fraction of the budget as
their progress (``set_time_fraction`` before each ``step``), so warm-up (given as a fraction) and
decay are fractions of the budget; per-epoch schedulers (ExponentialLR, StepLR, …) need no length
and step per epoch as usual; a scheduler that needs the run's length but cannot follow the clock
(OneCycleLR) is refused up front with one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler
from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class ScheduleKind:
    per_step: bool  # stepped after every optimizer step; else after every epoch
    run_length: bool  # constructed with epochs= and steps_per_epoch=
    follows_time: bool = False  # has set_time_fraction(): its progress can be the elapsed fraction of a time budget


PER_EPOCH = ScheduleKind(per_step=False, run_length=False)
TORCH_SCHEDULE_KINDS: dict[type, ScheduleKind] = {
    lr_scheduler.OneCycleLR: ScheduleKind(per_step=True, run_length=True),
    lr_scheduler.CyclicLR: ScheduleKind(per_step=True, run_length=False),
}


def schedule_kind(scheduler_class: type) -> ScheduleKind:
    """How the training loop steps ``scheduler_class`` (see the module doc)."""
    declared = getattr(scheduler_class, "kind", None)
    if isinstance(declared, ScheduleKind):
        return declared
    return TORCH_SCHEDULE_KINDS.get(scheduler_class, PER_EPOCH)


class WarmupSchedule(LRScheduler):
    """``lr = base_lr × factor(step)``: linear warm-up, then ``decay(progress)`` with progress 0 → 1."""

    kind = ScheduleKind(per_step=True, run_length=True, follows_time=True)
    # What a checkpoint restores; the rest of the state (the schedule's shape) comes from the config.
    POSITION = ("last_epoch", "_step_count", "base_lrs", "_last_lr", "time_fraction")

    def __init__(
        self,
        optimizer: Optimizer,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_factor: float = 0.01,
        min_lr_ratio: float = 0.0,
        warmup_fraction: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps = max(1, int(epochs) * int(steps_per_epoch))
        self.warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        warmup = self.warmup_fraction * self.total_steps if self.warmup_fraction is not None else warmup_epochs * steps_per_epoch
        self.warmup_steps = min(max(0, round(warmup)), self.total_steps - 1)
        self.warmup_factor = float(warmup_factor)
        self.min_lr_ratio = float(min_lr_ratio)
        self.time_fraction: float | None = None  # set under a time budget: the run's progress is the clock's
        super().__init__(optimizer, last_epoch)

    def decay(self, progress: float) -> float:
        raise NotImplementedError

    def set_time_fraction(self, fraction: float) -> None:
        """Follow a time budget: ``fraction`` (0 … 1) of it has elapsed; call before ``step()``."""
        self.time_fraction = min(1.0, max(0.0, float(fraction)))

    def factor(self, step: int) -> float:
        """``warm-up × decay(progress)``: warm-up over ``warmup_steps`` steps (or ``warmup_fraction`` of
        the run); decay progress 0 → 1 from the end of warm-up to the end of the run, in steps, or
        in elapsed time under a time budget."""
        fraction = self.time_fraction
        if fraction is None:  # the run's length in steps is known
            warm = step / self.warmup_steps if step < self.warmup_steps else 1.0
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        else:
            start = self.warmup_fraction or 0.0
            if self.warmup_fraction is not None:
                warm = fraction / start if fraction < start else 1.0
            else:  # warm-up counted in steps (warmup_epochs), decay in time
                warm = step / self.warmup_steps if step < self.warmup_steps else 1.0
            progress = (fraction - start) / (1.0 - start)
        warm = self.warmup_factor + (1.0 - self.warmup_factor) * warm
        return warm * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * self.decay(min(1.0, max(0.0, progress))))

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position in the schedule (also from effdetseg 0.1.0's LambdaLR state)."""
        self.__dict__.update({key: state_dict[key] for key in self.POSITION if key in state_dict})


class WarmupPolyLR(WarmupSchedule):
    """Linear warm-up over ``warmup_epochs``, then ``lr × (1 − progress)^power`` (DeepLab's poly)."""

    def __init__(
        self,
        optimizer: Optimizer,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_factor: float = 0.01,
        power: float = 0.9,
        min_lr_ratio: float = 0.0,
        warmup_fraction: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.power = float(power)
        super().__init__(optimizer, epochs, steps_per_epoch, warmup_epochs, warmup_factor, min_lr_ratio, warmup_fraction, last_epoch)

    def decay(self, progress: float) -> float:
        return (1.0 - progress) ** self.power


class WarmupCosineLR(WarmupSchedule):
    """Linear warm-up over ``warmup_epochs``, then a half cosine down to ``min_lr_ratio × lr``."""

    def decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))
