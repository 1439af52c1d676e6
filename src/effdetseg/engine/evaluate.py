"""Validation and evaluation: one confusion matrix over the whole dataset, all ranks summed.

Validation items keep their original size; ``collate_pad`` pads a batch with ignore (255) masks,
so the padded pixels never reach the matrix and each image is scored at its own resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..deploy.inference import SlideSpec, predict_logits
from .metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    *,
    ignore_index: int = 255,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: SlideSpec = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "validate",
) -> ConfusionMatrix:
    """The all-reduced confusion matrix of ``model`` on ``loader`` (the model is put in eval mode)."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    try:
        for batch in tqdm(loader, desc=description, disable=not progress, leave=False, dynamic_ncols=True):
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = predict_logits(model, images, flip=flip, scales=scales, slide=slide)
            matrix.update(logits.argmax(1), batch["mask"].to(device, non_blocking=True))
    finally:
        model.train(was_training)
    matrix.all_reduce()
    return matrix
