"""Bounds checks of what a model record states: every number a file could use to make the reader
allocate without limit, or predict NaN, is checked here before anything is built.

Each check raises one :class:`~effdetseg.errors.EffdetsegError` naming the file and the field; the
record types (:mod:`effdetseg.io.record`) and the reader of 0.1.0 files
(:mod:`effdetseg.io.model_files`) call them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import EffdetsegError

# Upper bounds of the record's architecture numbers, far above every zoo model (D7: BiFPN 312 × 4,
# head 624 × 3) but low enough that a model file cannot make the builder allocate without limit:
# 10⁹ BiFPN channels would otherwise fail only at a 1.28 TB allocation, and smaller huge values could
# fill the memory first. An integer under another key (UNet ``widths`` …) is bounded by DEFAULT.
ARCHITECTURE_LIMITS = {
    "num_classes": 65536,
    "bifpn_channels": 4096,
    "head_channels": 4096,
    "bifpn_layers": 32,
    "head_layers": 32,
    "min_level": 8,
    "max_level": 10,
    "in_channels": 64,
}
DEFAULT_ARCHITECTURE_LIMIT = 8192
# The largest input side a record may ask for: 8192² pixels (67 M, under PIL's decompression-bomb
# limit) is far above any training size; a larger one would make every prediction allocate
# gigabytes for the resized image before failing, and the error would blame the batch size.
MAX_INPUT_SIDE = 8192


def check_bounds(key: str, value: Any, source: str | Path) -> None:
    """Every integer of the record's architecture (also inside lists) in 0 … its limit."""
    if isinstance(value, (list, tuple)):
        if len(value) > 64:
            raise EffdetsegError(f"{source}: record architecture.{key} has {len(value)} entries (at most 64)")
        for item in value:
            check_bounds(key, item, source)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    limit = ARCHITECTURE_LIMITS.get(key, DEFAULT_ARCHITECTURE_LIMIT)
    if not (0 <= value <= limit):  # also NaN
        raise EffdetsegError(f"{source}: record architecture.{key} = {value!r} is out of range (0 … {limit})")


def checked_architecture(raw: Any, source: str | Path) -> tuple[str, int, dict[str, Any]]:
    """(name, num_classes, overrides) of a record's ``architecture`` mapping, every field checked."""
    if not isinstance(raw, Mapping):
        raise EffdetsegError(f"{source}: the model record has no architecture")
    raw = dict(raw)
    if "_target_" in raw:  # the network is built by name from the zoo; a class path is never followed
        raise EffdetsegError(f"{source}: record architecture._target_ is not allowed (the model is built by its name)")
    name, num_classes = raw.pop("name", None), raw.pop("num_classes", None)
    if not isinstance(name, str) or not name:
        raise EffdetsegError(f"{source}: record architecture.name must be a model name, got {name!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise EffdetsegError(f"{source}: record architecture.num_classes must be a positive integer, got {num_classes!r}")
    for key, value in {"num_classes": num_classes, **raw}.items():
        check_bounds(key, value, source)
    return name, num_classes, raw


def checked_size(value: Any, what: str) -> tuple[int, int]:
    """A stored [height, width]: two positive integers, each at most ``MAX_INPUT_SIDE``."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        if max(value) > MAX_INPUT_SIDE:
            raise EffdetsegError(f"{what}: {value[0]}×{value[1]} is larger than any network input (at most {MAX_INPUT_SIDE} per side)")
        return int(value[0]), int(value[1])
    raise EffdetsegError(f"{what}: expected [height, width] of positive integers, got {value!r}")


def three_floats(value: Any, what: str, positive: bool = False) -> tuple[float, float, float]:
    """A stored mean or std: three finite numbers (``positive``: each > 0)."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if not all(math.isfinite(v) for v in value):  # NaN would make every prediction NaN, argmax class 0
            raise EffdetsegError(f"{what}: expected 3 finite numbers, got {value!r}")
        if not positive or all(v > 0 for v in value):
            return (float(value[0]), float(value[1]), float(value[2]))
    raise EffdetsegError(f"{what}: expected 3 numbers{' > 0' if positive else ''}, got {value!r}")
