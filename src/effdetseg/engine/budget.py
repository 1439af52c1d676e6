"""Where a training run's time goes, and the time budget that bounds it (``train.max_minutes``).

``PhaseTimes`` adds wall-clock seconds per phase of the training loop (waiting for data, forward,
loss, backward, optimizer, EMA, logging, checkpoints, validation): on a CPU every phase is
synchronous, so the lap times are exact; on CUDA kernels run ahead of the host and only the sum is
meaningful (the per-phase split is not reported there).

``TimeBudget`` is the run's clock: seconds spent so far (carried over a resume), the fraction of
the budget used (the learning-rate schedule's progress), and whether the time left is down to what
the final validation, checkpoints and plots need (``reserve_s``, estimated from a timed validation
image before training and corrected by every validation that runs).
"""
from __future__ import annotations

import math
import time


class PhaseTimes:
    """Seconds per phase; ``lap(name)`` charges the time since the previous lap to ``name``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}


class TimeBudget:
    """``minutes`` of wall-clock for the whole run (None: no budget), ``spent_s`` of it used before
    this process started (a resumed run continues the clock)."""

    def __init__(self, minutes: float | None, spent_s: float = 0.0) -> None:
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self.spent_s = float(spent_s)
        self._start = time.monotonic()
        self.reserve_s = 0.0
        self.step_s = 0.0  # the last optimizer step's duration: the next one is expected to take as long
        self._last_step: float | None = None

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    def resume_from(self, spent_s: float) -> None:
        """Continue a run's clock: ``spent_s`` were used before the checkpoint this process resumed."""
        self.spent_s = float(spent_s)
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return self.spent_s + time.monotonic() - self._start

    def fraction(self) -> float:
        """Elapsed share of the time available for training (the budget less the reserve), 0 … 1."""
        if self.seconds is None:
            return 0.0
        usable = max(1e-9, self.seconds - self.reserve_s)
        return min(1.0, self.elapsed() / usable)

    def step_done(self) -> None:
        """Note the end of an optimizer step (its duration is the time since the last one)."""
        now = time.monotonic()
        if self._last_step is not None:
            self.step_s = now - self._last_step
        self._last_step = now

    def pause(self) -> None:
        """Time from here to the next step is not a step's (validation, the start of an epoch)."""
        self._last_step = None

    def training_over(self) -> bool:
        """Whether training must stop now so that one more step and the reserved finish would not
        still land inside the budget."""
        return self.seconds is not None and self.elapsed() + self.step_s + self.reserve_s >= self.seconds

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()
