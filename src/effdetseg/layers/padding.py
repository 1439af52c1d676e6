"""Pad inputs to the network's stride and crop outputs back, so any H×W works."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad bottom and right so both spatial sizes are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), value=value)


def crop_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop ``x`` to the spatial size of ``reference`` (the padding is at the bottom and right)."""
    return x[..., : reference.shape[-2], : reference.shape[-1]]
