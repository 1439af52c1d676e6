"""Convolution blocks shared by the BiFPN, the pathways and the heads."""
from __future__ import annotations

from torch import nn

# EfficientDet's BN epsilon (TF's 1e-3); momentum stays PyTorch's default so short CPU runs
# still get usable running statistics.
BN_EPS = 1e-3


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SeparableConv2d(nn.Sequential):
    """Depthwise k×k followed by pointwise 1×1 (no bias: a BatchNorm always follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


class SeparableConvBnAct(nn.Sequential):
    """Separable conv → BN → swish: one layer of the segmentation head."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = SeparableConv2d(in_channels, out_channels)
        self.bn = batch_norm(out_channels)
        self.act = nn.SiLU(inplace=True)


class ConvBn(nn.Sequential):
    """1×1 conv → BN: the channel projection on a backbone edge and for P6."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = batch_norm(out_channels)
