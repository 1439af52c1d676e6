"""Timing runners fairly on one machine: alternating passes (:func:`time_alternating`), the thread
count they run on, what the CPU is, and the table of their medians.

Used by the inference core (``--backend auto`` measures its candidates here), by the export's INT8
check and by the benchmarks, so every figure the project prints is timed the same way.
"""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    name: str
    median_ms: float
    samples_ms: tuple[float, ...]

    def speedup_over(self, reference: Timing) -> float:
        """Throughput of this runner relative to ``reference`` (> 1: faster)."""
        return reference.median_ms / self.median_ms


def time_alternating(
    runners: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 2, settle: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Median time of each runner over ``rounds`` passes, all runners alternating, the order
    rotating every round.

    Each timed call follows ``settle`` untimed calls of the same runner: the thread pool of the
    runtime that ran before (ONNX Runtime's and OpenMP's workers spin-wait after their work) keeps
    the cores busy for a while, and on 2 cores that doubled the next call's time (eager D0 at
    384×512 right after ONNX Runtime: 86 ms; after one call of its own: 46 ms, as alone).
    ``clock``: wall time by default; ``time.process_time`` counts this process's CPU time only,
    which on a machine shared with other work is the steadier measure of one thread's latency.
    """
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            runners[name]()
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(settle):
                runners[name]()
            started = clock()
            runners[name]()
            samples[name].append(1000 * (clock() - started))
    return {name: Timing(name, statistics.median(values), tuple(values)) for name, values in samples.items()}


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run PyTorch on ``threads`` CPU threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timing_table(timings: Mapping[str, Timing], reference: str = "eager fp32") -> str:
    """``runner  median ms  throughput × reference`` lines."""
    width = max(len(name) for name in timings)
    lines = [f"  {'runner'.ljust(width)}  median ms  throughput × {reference}"]
    for name, timing in timings.items():
        lines.append(f"  {name.ljust(width)}  {timing.median_ms:9.1f}  {timing.speedup_over(timings[reference]):.2f}")
    return "\n".join(lines)
