"""DataLoaders for training and validation, with data order and augmentation fixed by (seed, epoch).

Albumentations pipelines keep their own random generators, untouched by torch or NumPy seeds,
and a DataLoader worker receives a copy of the same generator state (so two workers would draw
the same augmentations). Each epoch therefore re-seeds every pipeline from (seed, epoch, rank,
worker): augmentation differs across workers and epochs, and an epoch replays identically on
resume. The dataset classes stay the data layer's; this module only finds their pipelines.
"""
from __future__ import annotations

from collections.abc import Iterator

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import collate_pad
from ..errors import EffdetsegError
from .distributed import DistributedContext, ShardSampler


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (order matters), well mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def augmentation_pipelines(obj: object, depth: int = 0) -> Iterator[A.BaseCompose]:
    """Albumentations pipelines held by a dataset (also inside Subset/ConcatDataset wrappers)."""
    if isinstance(obj, A.BaseCompose):
        yield obj
        return
    if depth > 3 or not hasattr(obj, "__dict__"):
        return
    for value in vars(obj).values():
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Dataset):
                    yield from augmentation_pipelines(item, depth + 1)
        elif isinstance(value, (A.BaseCompose, Dataset)) or (
            hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, np.ndarray, type))
        ):
            yield from augmentation_pipelines(value, depth + 1)


def seed_augmentations(dataset: Dataset, seed: int) -> None:
    for pipeline in augmentation_pipelines(dataset):
        pipeline.set_random_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch.initial_seed() in a worker = the loader's per-epoch base seed + worker_id.
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)
    if info is not None:
        seed_augmentations(info.dataset, derive_seed(seed, worker_id))


class TrainLoader:
    """The training DataLoader; call ``epoch(n)`` for the iterator of epoch ``n`` (seeded by it)."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, seed: int, ctx: DistributedContext) -> None:
        if len(dataset) < batch_size * ctx.world_size:
            raise EffdetsegError(
                f"data.batch_size: the training set has {len(dataset)} samples, fewer than one batch "
                f"({batch_size} × {ctx.world_size} process(es))"
            )
        self.dataset = dataset
        self.seed = seed
        self.ctx = ctx
        self.num_workers = num_workers
        # DistributedSampler also in one process: the order is a function of (seed, epoch) alone.
        self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_pad,
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,  # a last batch of one image breaks BatchNorm
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            generator=self.generator,
            persistent_workers=False,  # fresh workers each epoch: their seeds follow the epoch
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        epoch_seed = derive_seed(self.seed, epoch, self.ctx.rank)
        self.generator.manual_seed(epoch_seed)
        if self.num_workers == 0:
            seed_augmentations(self.dataset, epoch_seed)
        return self.loader


def val_loader(dataset: Dataset, batch_size: int, num_workers: int, ctx: DistributedContext) -> DataLoader:
    """Every validation sample on exactly one rank (no padding duplicates), in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(dataset, ctx.rank, ctx.world_size),
        num_workers=num_workers,
        collate_fn=collate_pad,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
