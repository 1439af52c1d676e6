"""Resampling between pyramid levels that keeps every level on the backbone's pixel grid.

Where a pixel of a stride-s map sits in the input depends on how the backbone pads its strided
layers. Pixel ``j`` of level ``l`` (stride ``2**l``) is centred at input coordinate
``2**l * j + alpha * (2**l - 1)``:

- ``alpha = 0`` ("corner"): symmetric padding ``(k - 1) / 2`` (PyTorch, timm's ``efficientnet_*``,
  ResNet, MobileNet): every level's pixel 0 sits on input pixel 0;
- ``alpha = 1`` ("same"): TensorFlow's "SAME" padding on even sizes, extra padding at the bottom
  and right (timm's ``tf_*`` models): each strided layer moves the grid one of its input pixels
  down and right, 3 input pixels at stride 4, 31 at stride 32;
- ``alpha = 0.5`` ("box"): a stride-s pixel at the centre of the s×s block it summarises (even
  kernels without padding, e.g. a 4×4/4 patch stem); what ``F.interpolate(align_corners=False)``
  and a ``k4 s2 p1`` transposed convolution assume.

Nearest-neighbour ×2 upsampling (EfficientDet's) assumes none of these exactly and shifts the
coarse level by half a fine pixel; a box-filter upsampler on a "same" backbone puts stride-4
logits 1.5 input pixels off, on a "corner" backbone 1.5 pixels the other way. Thin classes (poles,
signs) are a few pixels wide, so these functions resample to the grid the backbone actually has.
``alpha=LEGACY`` (−1) is the earlier behaviour (nearest upsampling, symmetric max-pooling, box
upsampler), kept so models trained with it predict as they were validated. (A float rather than
None so that TorchScript types the modules' attribute.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GRID_ALPHAS = (0.0, 0.5, 1.0)
LEGACY = -1.0


def upsample_to_grid(x: torch.Tensor, size: list[int], alpha: float) -> torch.Tensor:
    """N×C×h×w → N×C×``size``, an integer factor up, linearly interpolated on the backbone's grid.

    Output pixel ``o`` reads input coordinate ``(o - alpha·(s - 1)) / s`` (``s`` the factor), the
    exact correspondence of the two levels' pixel centres. For alpha 0 and 1 this is bilinear
    interpolation with ``align_corners=True`` over the input padded by one replicated pixel (after
    the last pixel for alpha 0, before the first for alpha 1), then one output row and column
    dropped: the grid points fall on output pixels exactly, and the border extends flat.
    """
    if alpha < 0.0:  # LEGACY (compared by sign: TorchScript cannot read the module-level constant)
        return F.interpolate(x, size=size, mode="nearest")
    if alpha == 0.5:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    height, width = size[0], size[1]
    if alpha == 0.0:
        padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
        return F.interpolate(padded, size=[height + 1, width + 1], mode="bilinear", align_corners=True)[..., :height, :width]
    padded = F.pad(x, (1, 0, 1, 0), mode="replicate")
    return F.interpolate(padded, size=[height + 1, width + 1], mode="bilinear", align_corners=True)[..., 1:, 1:]


class DownsampleToGrid(nn.Module):
    """3×3 stride-2 max-pooling whose output pixels sit on the next level of the backbone's grid.

    alpha 0 (and LEGACY): symmetric padding 1, window centred on fine pixel ``2j``; alpha 1: TF
    "SAME" (one −inf column after the last, none before), window centred on ``2j + 1``; alpha 0.5:
    2×2 windows, centred between ``2j`` and ``2j + 1``. Inputs have even sizes (the model pads to
    a multiple of its coarsest stride).
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)
        if alpha == 0.5:
            self.pool = nn.MaxPool2d(2, stride=2)
        elif alpha == 1.0:
            self.pool = nn.MaxPool2d(3, stride=2, padding=0)
        else:
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 1.0:
            x = F.pad(x, (0, 1, 0, 1), value=-math.inf)
        return self.pool(x)


def upsampling_kernel(alpha: float) -> torch.Tensor:
    """4×4 initial filter of a ``k4 s2 p1`` transposed convolution that doubles a map on the grid.

    With padding 1, input pixel ``i`` lands on output ``2i − 1 + t`` for tap ``t``: the triangle
    ``[½, 1, ½]`` centred on tap 1 (alpha 0) or tap 2 (alpha 1) makes output ``2i`` or ``2i + 1``
    the input pixel itself and the pixels between the average of their neighbours — linear
    interpolation on that grid. alpha 0.5 / LEGACY: the bilinear ``[¼, ¾, ¾, ¼]`` (box grid).
    """
    if alpha in (0.0, 1.0):
        ramp = torch.tensor([0.5, 1.0, 0.5, 0.0]) if alpha == 0.0 else torch.tensor([0.0, 0.5, 1.0, 0.5])
    else:
        ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    return ramp[:, None] * ramp[None, :]
