"""Pad inputs to the network's stride and crop outputs back, so any H×W works."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad bottom and right so both spatial sizes are multiples of ``multiple``.

    The padded size is written as ``multiple × ⌈size / multiple⌉`` (not ``size + (−size mod
    multiple)``): the same number, but a form whose halvings torch.export can simplify, so an
    exported program stays valid for every input size.
    """
    h, w = x.shape[-2:]
    padded_h = (h + multiple - 1) // multiple * multiple
    padded_w = (w + multiple - 1) // multiple * multiple
    return F.pad(x, (0, padded_w - w, 0, padded_h - h), value=value)


def crop_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop ``x`` to the spatial size of ``reference`` (the padding is at the bottom and right)."""
    return x[..., : reference.shape[-2], : reference.shape[-1]]
