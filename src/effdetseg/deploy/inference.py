"""Logits of a segmentation model with test-time augmentation and sliding-window inference.

``predict_logits`` is what evaluation and prediction share: horizontal flip, several scales and
windows over large images all reduce to running the model on resized/flipped/cropped inputs and
averaging the logits back on the input's pixel grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SlideSpec = int | Sequence[int] | None


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: SlideSpec = None,
    slide_overlap: float = 1 / 3,
) -> torch.Tensor:
    """Logits (B, C, H, W) for normalized ``images`` (B, 3, H, W), averaged over the augmentations.

    - ``scales``: the input is resized by each factor (bilinear), predicted, and the logits are
      resized back to H×W.
    - ``flip``: each scale is also predicted on the horizontally mirrored input, mirrored back.
    - ``slide``: window size (int or (h, w)) for inputs larger than what the model was trained on;
      windows overlap by ``slide_overlap`` of their size and overlapping logits are averaged.
      Inputs no larger than the window are predicted whole.

    Runs under ``torch.no_grad`` only if the caller asks for it; the model's mode is not changed.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must hold at least one factor")
    window = _window_size(slide)
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"scale factors must be positive, got {scale}")
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            x = scaled.flip(-1) if mirrored else scaled
            logits = _run(model, x, window, slide_overlap).float()
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            count += 1
    assert total is not None
    return total / count


def _window_size(slide: SlideSpec) -> tuple[int, int] | None:
    if slide is None:
        return None
    if isinstance(slide, int):
        window = (slide, slide)
    else:
        window = tuple(int(v) for v in slide)
        if len(window) != 2:
            raise ValueError(f"slide must be an int or (height, width), got {slide!r}")
    if min(window) < 1:
        raise ValueError(f"slide window must be positive, got {window}")
    return window  # type: ignore[return-value]


def _run(model: nn.Module, images: torch.Tensor, window: tuple[int, int] | None, overlap: float) -> torch.Tensor:
    height, width = images.shape[-2:]
    if window is None or (height <= window[0] and width <= window[1]):
        return model(images)
    return _sliding_window(model, images, window, overlap)


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, length): evenly strided, the last one flush with the end."""
    if length <= window:
        return [0]
    steps = math.ceil((length - window) / stride)
    return [min(i * stride, length - window) for i in range(steps + 1)]


def _sliding_window(model: nn.Module, images: torch.Tensor, window: tuple[int, int], overlap: float) -> torch.Tensor:
    if not 0 <= overlap < 1:
        raise ValueError(f"slide_overlap must be in [0, 1), got {overlap}")
    height, width = images.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride_h = max(1, round(win_h * (1 - overlap)))
    stride_w = max(1, round(win_w * (1 - overlap)))
    logits: torch.Tensor | None = None
    hits = torch.zeros(1, 1, height, width, device=images.device)
    for top in _window_starts(height, win_h, stride_h):
        for left in _window_starts(width, win_w, stride_w):
            crop = images[..., top : top + win_h, left : left + win_w]
            out = model(crop).float()
            if logits is None:
                logits = out.new_zeros(images.shape[0], out.shape[1], height, width)
            logits[..., top : top + win_h, left : left + win_w] += out
            hits[..., top : top + win_h, left : left + win_w] += 1
    assert logits is not None
    return logits / hits
