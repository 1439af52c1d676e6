"""DataLoaders for training and validation, the CPU plan behind them, and a data order and
augmentation fixed by (seed, epoch, sample).

The training order comes from a DistributedSampler seeded by (seed, epoch); every sample travels
to the dataset with its own augmentation seed, drawn from (seed, epoch, index) (``SeededOrder``),
so what a sample looks like does not depend on which worker or process loads it, on how many
workers there are, or on where in the epoch a resumed run starts. Workers can therefore live as
long as the run (``persistent_workers``) instead of being started afresh every epoch.

On a machine with few cores, DataLoader workers and the compute threads compete for the same
cores: ``plan_cpu`` chooses both together (``train.threads``, ``data.num_workers``: ``auto`` or a
number).
"""
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data import collate_list, collate_pad
from ..errors import EffdetsegError
from .distributed import DistributedContext, ShardSampler

AUTO = "auto"


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (order matters), well mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class CpuPlan:
    """Compute threads of this process and DataLoader workers, chosen together."""

    threads: int
    workers: int
    why: str
    follow_free_cores: bool = False  # re-count the free cores while training (``CoreWatch``)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU of ``/proc/stat``: (busy, total) clock ticks since boot. Niced processes count as
    busy: they give way to this one only in part, and a compute thread they interrupt holds up the others."""
    counts = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
                counts[int(name[3:])] = (user + nice + system + irq + softirq + steal, user + nice + system + idle + iowait + irq + softirq + steal)
    return counts


def busy_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: set[int]) -> float:
    """How many of ``cpus`` were busy between two ``cpu_ticks`` samples, in cores."""
    busy = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            busy += (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1])
    return busy


def busy_cores(seconds: float = 0.2) -> float:
    """How many of this process's cores other work keeps busy, measured over ``seconds`` while this
    process waits (0.0 where ``/proc/stat`` cannot be read)."""
    try:
        cpus = os.sched_getaffinity(0)
        before = cpu_ticks()
        time.sleep(seconds)
        return busy_share(before, cpu_ticks(), cpus)
    except (OSError, AttributeError, ValueError):
        return 0.0


class CoreWatch:
    """``train.threads=auto`` kept true while training: every ``every_s`` seconds, the cores other
    processes kept busy since the last look (the whole busy share less this process's own CPU time),
    and the compute threads set to the cores left free. A process that starts beside the run later
    would otherwise share a core with a compute thread, which holds up every parallel operation of
    the others. Only for a process without DataLoader workers, whose CPU time is then all its own."""

    def __init__(self, cores: int, threads: int, every_s: float = 20.0) -> None:
        self.cores, self.threads, self.every_s = cores, threads, every_s
        self.cpus = os.sched_getaffinity(0)
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, dict[int, tuple[int, int]]]:
        own = os.times()
        return time.monotonic(), own.user + own.system, cpu_ticks()

    def check(self) -> str | None:
        """Re-count when ``every_s`` has passed; the line to log when the thread count changed."""
        if time.monotonic() - self._last[0] < self.every_s:
            return None
        try:
            now = self._sample()
        except (OSError, ValueError):
            return None
        (t0, own0, ticks0), (t1, own1, ticks1) = self._last, now
        self._last = now
        others = busy_share(ticks0, ticks1, self.cpus) - (own1 - own0) / max(t1 - t0, 1e-6)
        threads = max(1, min(self.cores, math.floor(self.cores - max(0.0, others) + 0.5)))
        if threads == self.threads:
            return None
        self.threads = threads
        torch.set_num_threads(threads)
        return f"train.threads=auto: other processes now keep {max(0.0, others):.1f} core(s) busy: {threads} compute thread(s)"


def thread_limit(cores: int) -> int:
    """More compute threads than this is a typo, not a plan (each thread's stack and the pool's
    start-up alone would cost more than the run): 8 per core, at least 64."""
    return max(64, 8 * cores)


def check_counts(threads: object, workers: object, cores: int | None = None) -> None:
    """``train.threads`` (auto or 1 … ``thread_limit``) and ``data.num_workers`` (auto or ≥ 0):
    one error line naming the key."""
    cores = cores or available_cores()
    for key, value, least in (("train.threads", threads, 1), ("data.num_workers", workers, 0)):
        if value == AUTO:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EffdetsegError(f"{key} must be auto or an integer of at least {least}, got {value!r}")
    if threads != AUTO and threads > thread_limit(cores):  # type: ignore[operator]
        raise EffdetsegError(
            f"train.threads={threads} is far more than the {cores} core(s) of this machine (at most {thread_limit(cores)}); "
            f"use train.threads=auto or at most {cores}"
        )


def plan_cpu(device: torch.device, threads: object, workers: object, cached: bool, processes_here: int = 1) -> CpuPlan:
    """``train.threads`` and ``data.num_workers`` (each ``auto`` or a number) for this process.

    ``auto`` on the CPU: every core of this process's share that other processes do not keep
    busy at the start computes (``busy_cores``); data comes from the
    process itself when it is decoded in memory (augmenting a batch costs a few percent of a step,
    and nothing then competes with the compute threads), else from one worker that decodes while
    the step runs. On CUDA the host only feeds the device: up to 8 workers, one core left to the
    process that drives the GPU.
    """
    check_counts(threads, workers)
    cores = max(1, available_cores() // max(1, processes_here))
    if device.type == "cuda":
        auto_threads, auto_workers = min(cores, 4), min(8, max(1, cores - 1))
        why = [f"{cores} core(s) per process feeding {device}"]
    else:
        auto_threads, auto_workers = cores, 0 if cached else 1
        why = [f"{cores} core(s) per process", "data decoded in memory, augmented in the training process" if cached
               else "one worker decodes while the step computes"]
        if threads == AUTO and processes_here == 1:
            # A compute thread that shares its core with another busy process holds up every
            # parallel operation of the others; threads only on the cores that are free.
            busy = busy_cores()
            free = max(1, min(cores, math.floor(cores - busy + 0.5)))
            if free < cores:
                auto_threads = free
                why.append(f"other processes keep {busy:.1f} core(s) busy: {free} compute thread(s)")
    if threads != AUTO:
        why.append(f"train.threads={threads}")
        if int(threads) > cores:  # type: ignore[call-overload]
            why.append(f"warning: more threads than the {cores} core(s) of this process, which they share in turns "
                       f"(slower than train.threads=auto)")
    if workers != AUTO:
        why.append(f"data.num_workers={workers}")
    chosen_workers = auto_workers if workers == AUTO else int(workers)  # type: ignore[arg-type]
    return CpuPlan(
        threads=auto_threads if threads == AUTO else int(threads),  # type: ignore[arg-type]
        workers=chosen_workers,
        why="; ".join(why),
        follow_free_cores=(device.type == "cpu" and threads == AUTO and processes_here == 1 and chosen_workers == 0
                           and hasattr(os, "sched_getaffinity") and os.path.exists("/proc/stat")),  # Linux's counters
    )


def _one_opencv_thread() -> None:
    """OpenCV on one thread in this process, before it forks DataLoader workers: a worker is one of
    the processes sharing the cores, and OpenCV's own thread pool would compete with the compute
    threads. Set in the parent, since a forked child that reconfigures a pool its parent had used
    can wait forever on a lock held at the fork (a worker hung in ``cv2.setNumThreads``)."""
    cv2.setNumThreads(1)


def _init_worker(worker_id: int) -> None:
    """``worker_init_fn``: NumPy and Python generators from the worker's own torch seed (for
    transforms that use the global generators); OpenCV on one thread where the worker did not
    inherit it (a spawned worker; a forked one has its parent's setting)."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SeededOrder(Sampler[tuple[int, int]]):
    """One epoch of ``sampler``'s order as ``(index, augmentation seed)`` keys, from position ``start``
    on (a resumed epoch skips the samples already trained on: nothing of them is loaded again)."""

    def __init__(self, sampler: DistributedSampler, seed: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.start:
                yield index, derive_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


class TrainLoader:
    """The training DataLoader; ``epoch(n, start_batch)`` returns the loader for epoch ``n``."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, seed: int, ctx: DistributedContext) -> None:
        if len(dataset) < batch_size * ctx.world_size:
            raise EffdetsegError(
                f"data.batch_size: the training set has {len(dataset)} samples, fewer than one batch "
                f"({batch_size} × {ctx.world_size} process(es))"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.ctx = ctx
        # DistributedSampler also in one process: the order is a function of (seed, epoch) alone.
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.batches_per_epoch = len(sampler) // batch_size
        self.order = SeededOrder(sampler, seed)
        if num_workers > 0:
            _one_opencv_thread()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.order,
            num_workers=num_workers,
            collate_fn=collate_pad,
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,  # a last batch of one image breaks BatchNorm
            worker_init_fn=_init_worker if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        self.order.set_epoch(epoch, start_batch * self.batch_size)
        return self.loader


def val_loader(dataset: Dataset, batch_size: int, num_workers: int, ctx: DistributedContext) -> DataLoader:
    """Every validation sample on exactly one rank (no padding duplicates), in order, as lists of
    uint8 images at their own sizes (the inference path batches and normalizes them)."""
    if num_workers > 0:
        _one_opencv_thread()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(dataset, ctx.rank, ctx.world_size),
        num_workers=num_workers,
        collate_fn=collate_list,
        pin_memory=False,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
