"""Reusable building blocks: convolutions, fusion and resampling used by the networks."""
from .conv import ConvBn, SeparableConv2d, SeparableConvBnAct, batch_norm
from .fusion import FastNormalizedFusion
from .padding import crop_to, pad_to_multiple

__all__ = [
    "ConvBn",
    "SeparableConv2d",
    "SeparableConvBnAct",
    "batch_norm",
    "FastNormalizedFusion",
    "pad_to_multiple",
    "crop_to",
]
