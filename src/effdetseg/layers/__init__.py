"""Reusable building blocks: convolutions, fusion and resampling used by the networks."""
from .conv import ConvBn, SeparableConv2d, SeparableConvBnAct, batch_norm
from .fusion import FastNormalizedFusion
from .padding import crop_to, pad_to_multiple
from .resample import GRID_ALPHAS, LEGACY, DownsampleToGrid, upsample_to_grid, upsampling_kernel

__all__ = [
    "ConvBn",
    "SeparableConv2d",
    "SeparableConvBnAct",
    "batch_norm",
    "FastNormalizedFusion",
    "pad_to_multiple",
    "crop_to",
    "GRID_ALPHAS",
    "LEGACY",
    "DownsampleToGrid",
    "upsample_to_grid",
    "upsampling_kernel",
]
