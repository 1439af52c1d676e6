"""Parameters and multiply-adds, counted by running the model on the meta device (no memory, no time)."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int] = (512, 512), batch: int = 1) -> int:
    """Multiply-adds of one forward pass (convolutions and matmuls; PyTorch counts 2 FLOPs per MAC).

    The count runs on the meta device (shapes only); a model with real weights is copied there
    first, so the caller's model stays where it is.
    """
    if any(p.device.type != "meta" for p in model.parameters()):
        model = copy.deepcopy(model)
    model = model.to("meta").eval()
    x = torch.empty(batch, 3, *input_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def model_complexity(name: str, input_size: tuple[int, int] = (512, 512), **kwargs: Any) -> dict[str, int]:
    """Params and MACs of a zoo variant, built directly on the meta device."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return {"params": count_parameters(model), "macs": count_macs(model, input_size)}
