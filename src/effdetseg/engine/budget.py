"""Where a training run's time goes, and the time budget that bounds it (``train.max_minutes``).

``PhaseTimes`` adds wall-clock seconds per phase of the training loop (waiting for data, forward,
loss, backward, optimizer, EMA, logging, checkpoints, validation): on a CPU every phase is
synchronous, so the lap times are exact; on CUDA kernels run ahead of the host and only the sum is
meaningful (the per-phase split is not reported there).

``TimeBudget`` is the run's clock: seconds spent so far (carried over a resume), the fraction of
the budget used (the learning-rate schedule's progress), and whether the time left is down to what
the final validation, checkpoints and plots need (``reserve_s``, estimated from a timed validation
image before training and corrected by every validation that runs) — on a machine whose load
changes while the run trains (see the class).
"""
from __future__ import annotations

import math
import time
from collections import deque


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
    this process started (a resumed run continues the clock).

    The stop decision holds on a machine whose load changes while the run trains (another process
    taking the cores slows steps and validation alike):

    - the next step is expected to take as long as the slowest of the last ``WINDOW`` steps, not
      the last one;
    - the reserved finish (``reserve_s``: the final validation, checkpoints and plots, measured by
      the trainer when it sets it) is scaled by how much slower the recent steps are than the steps
      around that measurement (``slowdown``), counted twice while it is an estimate made before
      any validation ran (``UNMEASURED``), and a margin of ``MARGIN`` of the budget is kept;
    - the work between an epoch's last step and the next epoch's first (a validation every epoch,
      the checkpoint; learned from the calls: ``step_done`` … ``pause``) is counted before the step
      that ends an epoch, since training cannot stop inside it.
    """

    WINDOW = 16  # recent steps whose slowest is the next step's estimate
    RECENT = 5  # steps whose median is the current step time (for the slowdown)
    MARGIN = 0.02  # of the budget, kept free on top of the estimates
    MIN_MARGIN_S, MAX_MARGIN_S = 1.0, 30.0
    UNMEASURED = 2.0  # the reserve estimated before any validation ran, counted this many times

    def __init__(self, minutes: float | None, spent_s: float = 0.0) -> None:
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self.spent_s = float(spent_s)
        self._start = time.monotonic()
        self._reserve_s = 0.0
        self._estimated = True
        self.step_s = 0.0  # the last optimizer step's duration
        self._last_step: float | None = None
        self._steps: deque[float] = deque(maxlen=self.WINDOW)
        self._reference: float | None = None  # the step time when the reserve was measured
        self._since_reserve: list[float] = []  # steps after a reserve set before any step: its reference
        self._epoch_steps = 0  # steps since the last pause
        self._steps_per_epoch = 0  # the most steps seen between two pauses
        self._epoch_end: deque[float] = deque(maxlen=3)  # seconds from an epoch's last step to the next pause
        self._fraction = 0.0

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    @property
    def reserve_s(self) -> float:
        """Seconds the end of the run needs after its last step, as measured when set."""
        return self._reserve_s

    @reserve_s.setter
    def reserve_s(self, seconds: float) -> None:
        self._reserve_s = float(seconds)
        # Before the first step the reserve is a timed pass over one image, which leaves out the fixed
        # costs of a validation (preparing each model, starting the loader) and of the plots; on a
        # loaded machine those grew to twice the estimate. A reserve set later comes from a validation that ran.
        self._estimated = not self._steps
        # The steps just before the measurement ran under the same load as it did.
        self._reference = _median(list(self._steps)[-self.RECENT:]) if self._steps else None
        self._since_reserve = []

    def resume_from(self, spent_s: float) -> None:
        """Continue a run's clock: ``spent_s`` were used before the checkpoint this process resumed."""
        self.spent_s = float(spent_s)
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return self.spent_s + time.monotonic() - self._start

    def margin_s(self) -> float:
        if self.seconds is None:
            return 0.0
        return min(self.MAX_MARGIN_S, max(self.MIN_MARGIN_S, self.MARGIN * self.seconds))

    def slowdown(self) -> float:
        """How many times slower the recent steps are than those around the reserve's measurement (≥ 1)."""
        if self._reference is None or len(self._steps) < 2:
            return 1.0
        recent = _median(list(self._steps)[-self.RECENT:])
        return max(1.0, recent / max(self._reference, 1e-9))

    def next_step_s(self) -> float:
        """The next step's expected duration: the slowest of the recent ones."""
        return max(self._steps) if self._steps else self.step_s

    def finish_s(self) -> float:
        """Seconds kept for the end of the run: the reserve at today's load, and the margin."""
        factor = self.UNMEASURED if self._estimated else 1.0
        return factor * self._reserve_s * self.slowdown() + self.margin_s()

    def fraction(self) -> float:
        """Elapsed share of the time available for training (the budget less the finish and the
        next step), 0 … 1; it never goes back (a slow step shortens the time left, a fast one
        does not give it back to the schedule)."""
        if self.seconds is None:
            return 0.0
        usable = max(1e-9, self.seconds - self.finish_s() - self.next_step_s())
        self._fraction = max(self._fraction, min(1.0, self.elapsed() / usable))
        return self._fraction

    def step_done(self) -> None:
        """Note the end of an optimizer step (its duration is the time since the last one)."""
        now = time.monotonic()
        if self._last_step is not None:
            self.step_s = now - self._last_step
            self._steps.append(self.step_s)
            if self._reference is None and self._reserve_s:
                self._since_reserve.append(self.step_s)
                if len(self._since_reserve) > self.RECENT:  # the first step after a pause is left out
                    self._reference = _median(self._since_reserve[1:])
        self._last_step = now
        self._epoch_steps += 1

    def pause(self) -> None:
        """Time from here to the next step is not a step's (the start of an epoch); the time since
        the last step was the end of the previous epoch (its validation, checkpoint and log)."""
        if self._last_step is not None and self._epoch_steps:
            self._epoch_end.append(time.monotonic() - self._last_step)
            self._steps_per_epoch = max(self._steps_per_epoch, self._epoch_steps)
        self._epoch_steps = 0
        self._last_step = None

    def training_over(self) -> bool:
        """Whether training must stop now so that one more step and the reserved finish would not
        still land inside the budget (with the end of an epoch between them, when the step just
        done was an epoch's last)."""
        if self.seconds is None:
            return False
        ahead = self.next_step_s() + self.finish_s()
        if self._steps_per_epoch and self._epoch_steps >= self._steps_per_epoch and self._epoch_end:
            ahead += max(self._epoch_end) * self.slowdown()
        return self.elapsed() + ahead >= self.seconds

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
