"""The classic UNet (Ronneberger et al., 2015): 64–128–256–512–1024, transposed-conv decoder.

Padded 3×3 convolutions with BatchNorm, so the output has the input's size; trained from scratch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import crop_to, pad_to_multiple
from .registry import register_model


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 21, in_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512, 1024)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)]
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList([UpBlock(widths[i], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        self.input_multiple = 2 ** (len(widths) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(images, self.input_multiple)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return crop_to(self.classifier(x), images)


@register_model("unet")
def unet(num_classes: int = 21, in_channels: int = 3, **overrides) -> UNet:
    """Classic UNet, 64–1024 channels, any number of input channels."""
    return UNet(num_classes=num_classes, in_channels=in_channels, **overrides)
