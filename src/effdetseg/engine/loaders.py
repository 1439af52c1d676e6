"""DataLoaders for training and validation, with data order and augmentation fixed by (seed, epoch).

The training order comes from a DistributedSampler seeded by (seed, epoch); the augmentation from
the dataset's seeding hook, ``set_epoch(epoch, seed)`` (see :class:`effdetseg.data.AugmentedDataset`),
which this loader calls before every epoch — in every worker with a seed drawn from
(seed, epoch, rank, worker), or in the process itself without workers. Workers are started afresh
each epoch, so their seeds follow the epoch, and a resumed epoch replays exactly.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import collate_list, collate_pad
from ..errors import EffdetsegError
from .distributed import DistributedContext, ShardSampler


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (order matters), well mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _set_epoch(dataset: Dataset, epoch: int, seed: int) -> None:
    hook = getattr(dataset, "set_epoch", None)
    if hook is not None:
        hook(epoch, seed)


class _WorkerSeeder:
    """``worker_init_fn``: seeds Python, NumPy and the dataset's augmentation in each worker."""

    def __init__(self) -> None:
        self.epoch = 0  # set before each epoch's workers start (they copy this object)

    def __call__(self, worker_id: int) -> None:
        # torch.initial_seed() in a worker = the loader generator's per-epoch base seed + worker_id.
        seed = torch.initial_seed() % 2**32
        np.random.seed(seed)
        random.seed(seed)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            _set_epoch(info.dataset, self.epoch, derive_seed(seed, worker_id))


class TrainLoader:
    """The training DataLoader; call ``epoch(n)`` for the iterator of epoch ``n`` (seeded by it)."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, seed: int, ctx: DistributedContext) -> None:
        if len(dataset) < batch_size * ctx.world_size:
            raise EffdetsegError(
                f"data.batch_size: the training set has {len(dataset)} samples, fewer than one batch "
                f"({batch_size} × {ctx.world_size} process(es))"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.ctx = ctx
        self.num_workers = num_workers
        # DistributedSampler also in one process: the order is a function of (seed, epoch) alone.
        self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.generator = torch.Generator()
        self.worker_seeder = _WorkerSeeder()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_pad,
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,  # a last batch of one image breaks BatchNorm
            worker_init_fn=self.worker_seeder if num_workers > 0 else None,
            generator=self.generator,
            persistent_workers=False,  # fresh workers each epoch: their seeds follow the epoch
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        epoch_seed = derive_seed(self.seed, epoch, self.ctx.rank)
        self.generator.manual_seed(epoch_seed)
        self.worker_seeder.epoch = epoch
        if self.num_workers == 0:
            _set_epoch(self.dataset, epoch, epoch_seed)
        return self.loader


def val_loader(dataset: Dataset, batch_size: int, num_workers: int, ctx: DistributedContext) -> DataLoader:
    """Every validation sample on exactly one rank (no padding duplicates), in order, as lists of
    uint8 images at their own sizes (the inference path batches and normalizes them)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(dataset, ctx.rank, ctx.world_size),
        num_workers=num_workers,
        collate_fn=collate_list,
        pin_memory=False,
    )
