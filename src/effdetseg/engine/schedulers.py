"""Learning-rate schedules stepped after every optimizer step: linear warm-up, then poly or cosine.

Any ``torch.optim.lr_scheduler`` class works as ``train.scheduler._target_`` too. The rule the
training loop follows: a scheduler whose constructor takes ``steps_per_epoch`` (these, and
torch's OneCycleLR) receives ``epochs`` and ``steps_per_epoch`` and is stepped after each
optimizer step; any other (the original's ExponentialLR, StepLR, …) is stepped once per epoch.
"""
from __future__ import annotations

import inspect
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class _WarmupSchedule:
    """lr factor at optimizer step ``step``: linear from ``warmup_factor`` to 1, then ``decay(progress)``."""

    def __init__(self, total_steps: int, warmup_steps: int, warmup_factor: float) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(max(0, warmup_steps), self.total_steps - 1)
        self.warmup_factor = warmup_factor

    def decay(self, progress: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.decay(min(1.0, progress))


class _Poly(_WarmupSchedule):
    def __init__(self, total_steps: int, warmup_steps: int, warmup_factor: float, power: float, min_factor: float) -> None:
        super().__init__(total_steps, warmup_steps, warmup_factor)
        self.power, self.min_factor = power, min_factor

    def decay(self, progress: float) -> float:
        return self.min_factor + (1.0 - self.min_factor) * (1.0 - progress) ** self.power


class _Cosine(_WarmupSchedule):
    def __init__(self, total_steps: int, warmup_steps: int, warmup_factor: float, min_factor: float) -> None:
        super().__init__(total_steps, warmup_steps, warmup_factor)
        self.min_factor = min_factor

    def decay(self, progress: float) -> float:
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupPolyLR(LambdaLR):
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
        last_epoch: int = -1,
    ) -> None:
        schedule = _Poly(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch), warmup_factor, power, min_lr_ratio)
        super().__init__(optimizer, schedule, last_epoch=last_epoch)


class WarmupCosineLR(LambdaLR):
    """Linear warm-up over ``warmup_epochs``, then a half cosine down to ``min_lr_ratio × lr``."""

    def __init__(
        self,
        optimizer: Optimizer,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_factor: float = 0.01,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        schedule = _Cosine(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch), warmup_factor, min_lr_ratio)
        super().__init__(optimizer, schedule, last_epoch=last_epoch)


def stepped_per_iteration(target: type) -> bool:
    """Whether a scheduler class is stepped after each optimizer step (it takes ``steps_per_epoch``)."""
    try:
        return "steps_per_epoch" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
