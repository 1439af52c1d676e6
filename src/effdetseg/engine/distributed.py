"""torch.distributed set-up for ``torchrun``: one process per device, rank 0 writes.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs in one process.
The backend is NCCL on CUDA and gloo on CPU.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..devices import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1  # processes on this machine (they share its cores and memory)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes in the environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device, local_world_size=local_world_size)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (the value itself in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def broadcast_floats(values: list[float], device: torch.device, src: int = 0) -> list[float]:
    """Rank ``src``'s numbers on every rank (decisions every rank must take alike: the time budget's)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=src)
        return tensor.tolist()
    return values


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (e.g. the experiment directory rank 0 chose)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]
    return obj


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, …``: every sample on exactly one rank, none repeated.

    For validation: DistributedSampler pads the last shard with duplicates so ranks have equal
    lengths, which would count those pixels twice in the summed confusion matrix.
    """

    def __init__(self, dataset: Sized, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's buffers (BatchNorm running statistics) rank ``src``'s.

    DDP broadcasts buffers at the start of each training forward, then every rank updates its own
    statistics with its own batch: after the last step they differ. Validation on all ranks, and
    the checkpoint rank 0 writes, must use the same ones.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)
