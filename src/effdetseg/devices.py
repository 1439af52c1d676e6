"""Devices: the one resolver of ``--device``/``device=`` values, and what the CPU can do fast."""
from __future__ import annotations

import functools

import torch

from .errors import EffdetsegError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
# CPU features that run bfloat16 matrix and convolution kernels natively (x86 AVX-512 BF16 / AMX,
# Arm BF16); without them oneDNN emulates bf16 and autocast is several times slower than fp32.
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto``/None → this process's CUDA device when there is one, else the CPU; ``cuda`` → ``cuda:local_rank``.

    A name torch does not know, or CUDA on a machine without it, is one error line.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise EffdetsegError(f"device: {str(name)!r} is not a device (use {DEVICE_HELP})") from None
    if device.type not in ("cpu", "cuda"):
        raise EffdetsegError(f"device: {str(name)!r} is not supported (use {DEVICE_HELP})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EffdetsegError(f"device: {name} requested but CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise EffdetsegError(f"device: {name} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (CUDA out of memory, or the CPU allocator's refusal)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@functools.cache
def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU has bfloat16 instructions (from /proc/cpuinfo); None when it cannot tell."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags: set[str] = set()
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    if not flags:
        return None
    return bool(flags & _NATIVE_BF16_FLAGS)


def slow_bf16_warning(device: torch.device, dtype: torch.dtype | None, option: str) -> str | None:
    """The one warning line for bf16 autocast on a CPU that emulates it, else None."""
    if dtype != torch.bfloat16 or device.type != "cpu" or cpu_has_native_bf16() is not False:
        return None
    return (
        f"warning: {option}: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16), so bf16 autocast "
        "runs slower than fp32 here (about 7× in our measurement); continuing"
    )
