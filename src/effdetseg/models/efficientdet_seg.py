"""EfficientDet for semantic segmentation (EfficientDet paper, §5.2).

Reads top to bottom as the tensor flows:
backbone C2–C5 → P6, P7 from C5 → BiFPN over P2–P7 → extra top-down pathway P7→P2 →
head on P2 (stride 4; or P2–P5 brought to P2 and fused, ``head_levels``) → classifier →
transposed convolutions to stride 1 → crop to the input. With ``alignment="grid"`` every
resampling follows the backbone's pixel grid (see :mod:`effdetseg.layers.resample`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import LEGACY, FastNormalizedFusion, SeparableConvBnAct, crop_to, pad_to_multiple, upsample_to_grid, upsampling_kernel
from .backbone import Backbone, Pretrained
from .bifpn import PATHWAYS, BiFPN, ExtraLevels, FpnLayer, FpnNodeBlock, fpn_topology
from .registry import register_model

BACKBONE_LEVELS = (2, 3, 4, 5)  # strides 4 … 32


@dataclass(frozen=True)
class EfficientDetSegConfig:
    backbone: str
    bifpn_channels: int
    bifpn_layers: int
    head_channels: int
    head_layers: int
    extra_top_down: bool = True
    upsampler: str = "transposed"  # "transposed": learned per-class transposed convs; "bilinear": fixed
    min_level: int = 2
    max_level: int = 7
    # "grid": resample between levels on the backbone's own pixel grid (TF "SAME" or symmetric
    # padding); "legacy": nearest upsampling and box-grid upsampler (1.5–4 px off, see
    # tests/models/test_alignment.py). Legacy stays the default: checkpoints record no alignment and were
    # trained with it, and "grid" has not yet measured better (docs/benchmarks.md).
    alignment: str = "legacy"
    head_levels: int = 1  # the head reads P2 … P(1 + head_levels), each brought to P2 and fused (1: P2 alone)
    bn_momentum: float = 0.1  # of the decoder's BatchNorms (PyTorch's default; EfficientDet's is 0.01)
    # "default": PyTorch's initialisation, fusion weights 1 (EfficientDet); "identity": every BiFPN
    # and top-down node starts as a pass-through favouring its own level (FpnNodeBlock.init_identity).
    decoder_init: str = "default"


def make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled_config(phi: int, extra_top_down: bool = True) -> EfficientDetSegConfig:
    """The one scaling rule, anchored at D4 = the paper's §5.2 model (B4, BiFPN 128×3, head 256×3).

    With s = φ − 4: backbone EfficientNet-Bφ; BiFPN width = 128 · 1.35^s rounded to a multiple
    of 8 (EfficientDet's width factor); BiFPN layers = max(2, 3 + ⌊s/2⌋); head width = 2 × BiFPN
    width; head layers = 3.
    """
    s = phi - 4
    width = make_divisible(128 * 1.35**s)
    return EfficientDetSegConfig(
        backbone=f"efficientnet_b{phi}",
        bifpn_channels=width,
        bifpn_layers=max(2, 3 + math.floor(s / 2)),
        head_channels=2 * width,
        head_layers=3,
        extra_top_down=extra_top_down,
    )


class SegmentationHead(nn.Module):
    """``head_layers`` × (separable conv, BN, swish) at P2, then a 1×1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[SeparableConvBnAct(in_channels if i == 0 else channels, channels) for i in range(num_layers)]
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            x = checkpoint(self.layers, x, use_reentrant=False)
        else:
            x = self.layers(x)
        return self.classifier(x)


class TransposedConvUpsampler(nn.Sequential):
    """log2(stride) transposed convolutions (k4, s2) on the class logits, initialised bilinear.

    One learnable upsampling filter per class (grouped): they run on ``num_classes`` channels, not
    the head's width, since wide convolutions at full resolution are where the original
    implementation spent most of its 59 GMACs.
    """

    def __init__(self, channels: int, stride: int, alpha: float = LEGACY) -> None:
        steps = int(math.log2(stride))
        if 2**steps != stride:
            raise ValueError(f"stride must be a power of two, got {stride}")
        super().__init__(
            *[nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False) for _ in range(steps)]
        )
        # Linear interpolation on the backbone's grid to start with (bilinear on a box grid for LEGACY).
        for up in self:
            up.weight.data.copy_(upsampling_kernel(alpha).expand_as(up.weight))


class BilinearUpsampler(nn.Module):
    """Fixed bilinear upsampling of the class logits by ``stride`` on the backbone's grid (no parameters)."""

    def __init__(self, stride: int, alpha: float = LEGACY) -> None:
        super().__init__()
        self.stride = stride
        self.alpha = 0.5 if alpha == LEGACY else float(alpha)  # LEGACY upsampled on the box grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to_grid(x, [x.shape[-2] * self.stride, x.shape[-1] * self.stride], self.alpha)


class LevelFusion(nn.Module):
    """P2 … P(1+n) brought to P2's size on the backbone's grid and fused with learned weights.

    A semantic-FPN style input for the head: coarse levels reach the classifier through one
    interpolation instead of the whole top-down chain. Weights start at P2 ×2, each coarser ×1.
    """

    def __init__(self, num_levels: int, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.fuse = FastNormalizedFusion(num_levels)
        with torch.no_grad():
            self.fuse.weight[0] = 2.0  # P2 keeps the detail; coarser levels add context

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = [features[0].shape[-2], features[0].shape[-1]]
        maps = [features[0]]
        for i in range(1, len(self.fuse.weight)):
            maps.append(upsample_to_grid(features[i], size, self.alpha))
        return self.fuse(maps)


class EfficientDetSeg(nn.Module):
    """EfficientNet → BiFPN P2–P7 → (extra top-down pathway) → head on P2 → transposed convs."""

    def __init__(self, config: EfficientDetSegConfig, num_classes: int = 21, backbone_pretrained: Pretrained = False) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        if config.min_level != 2:
            raise ValueError("the head reads P2: min_level must be 2")
        if config.max_level < 5:
            raise ValueError("max_level must be at least 5 (C5)")
        if config.alignment not in ("grid", "legacy"):
            raise ValueError(f"alignment must be 'grid' or 'legacy', got {config.alignment!r}")
        if not 1 <= config.head_levels <= config.max_level - config.min_level + 1:
            raise ValueError(f"head_levels must be 1 … {config.max_level - config.min_level + 1}, got {config.head_levels}")
        if not 0.0 < config.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {config.bn_momentum}")
        if config.decoder_init not in ("default", "identity"):
            raise ValueError(f"decoder_init must be 'default' or 'identity', got {config.decoder_init!r}")
        self.backbone = Backbone(config.backbone, backbone_pretrained)
        # A backbone whose strided layers disagree has no one grid: it gets the legacy resampling.
        grid = self.backbone.grid_alpha if config.alignment == "grid" else None
        alpha = LEGACY if grid is None else grid
        self.grid_alpha = alpha
        self.extra_levels = ExtraLevels(self.backbone.channels[-1], config.bifpn_channels, config.max_level - 5, alpha)
        in_channels = self.backbone.channels + [config.bifpn_channels] * (config.max_level - 5)
        self.bifpn = BiFPN(
            in_channels,
            config.bifpn_channels,
            config.bifpn_layers,
            config.min_level,
            config.max_level,
            backbone_levels=BACKBONE_LEVELS,
            # Without the extra pathway only P2 is read: the last bottom-up pathway would be dead.
            last_layer_pathways=PATHWAYS if config.extra_top_down else ("top_down",),
            alpha=alpha,
        )
        self.top_down = (
            FpnLayer(
                fpn_topology(config.min_level, config.max_level, ("top_down",)),
                [config.bifpn_channels] * len(in_channels),
                config.bifpn_channels,
                alpha=alpha,
            )
            if config.extra_top_down
            else None
        )
        self.head_levels = config.head_levels
        self.level_fusion = LevelFusion(config.head_levels, alpha) if config.head_levels > 1 else None
        self.head = SegmentationHead(config.bifpn_channels, config.head_channels, config.head_layers, num_classes)
        stride = 2**config.min_level
        if config.upsampler == "transposed":
            self.upsample: nn.Module = TransposedConvUpsampler(num_classes, stride, alpha)
        elif config.upsampler == "bilinear":
            self.upsample = BilinearUpsampler(stride, alpha)
        else:
            raise ValueError(f"upsampler must be 'transposed' or 'bilinear', got {config.upsampler!r}")
        self.input_multiple = 2**config.max_level  # the stride of the coarsest level
        # The decoder's BatchNorms only (the backbone keeps its own): EfficientDet uses 0.01, which
        # averages the running statistics over ~100 steps instead of ~10.
        for name, module in self.named_modules():
            if isinstance(module, nn.BatchNorm2d) and not name.startswith("backbone."):
                module.momentum = config.bn_momentum
            if config.decoder_init == "identity" and isinstance(module, FpnNodeBlock):
                module.init_identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in training (timm's switch): the backbone's blocks, every BiFPN
        and top-down node and the head keep only their inputs and recompute the rest in backward.
        As in timm, the recomputation also updates BatchNorm's running statistics a second time."""
        self.backbone.body.set_grad_checkpointing(enable)
        for module in self.modules():
            if isinstance(module, (FpnLayer, SegmentationHead)):
                module.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images), images)

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images N×3×H×W → the pyramid P2 … P7 the head reads (after the extra top-down pathway),
        of the input padded to a multiple of 2**max_level. Training-only auxiliary heads read it too."""
        x = pad_to_multiple(images, self.input_multiple)
        if not torch.jit.is_scripting() and x.device.type == "cpu" and not torch.compiler.is_compiling():
            # oneDNN runs depthwise convolutions (most of this network) about twice as fast in NHWC:
            # an NCHW caller gets the fast layout too (a no-op for channels-last input). Compilers
            # and exporters choose layouts themselves.
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)  # C2 … C5
        features = features + self.extra_levels(features[-1])  # P6, P7
        features = self.bifpn(features)  # P2 … P7
        if self.top_down is not None:
            features = self.top_down(features)
        return features

    def forward_head(self, features: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The pyramid → class logits N×classes×H×W at the size of ``images``."""
        x = features[0] if self.level_fusion is None else self.level_fusion(features[: self.head_levels])
        logits = self.head(x)  # stride 4
        logits = self.upsample(logits)  # stride 1
        return crop_to(logits, images)


def _register_efficientdet_seg(phi: int, extra_top_down: bool) -> None:
    name = f"efficientdet_d{phi}_seg" + ("" if extra_top_down else "_p2")

    def variant(num_classes: int = 21, backbone_pretrained: Pretrained = False, **overrides) -> EfficientDetSeg:
        config = scaled_config(phi, extra_top_down)
        unknown = set(overrides) - set(asdict(config))
        if unknown:
            raise TypeError(f"{name}: unknown override(s) {sorted(unknown)}; known: {sorted(asdict(config))}")
        config = EfficientDetSegConfig(**{**asdict(config), **overrides})
        return EfficientDetSeg(config, num_classes=num_classes, backbone_pretrained=backbone_pretrained)

    variant.__name__ = name
    pathway = "BiFPN + extra top-down pathway, head on P2" if extra_top_down else "head on BiFPN's P2 output"
    variant.__doc__ = f"EfficientDet-D{phi} segmentation: {pathway}."
    register_model("efficientdet_seg" if extra_top_down else "efficientdet_seg_p2")(variant)


for _phi in range(8):
    _register_efficientdet_seg(_phi, extra_top_down=True)
for _phi in range(8):
    _register_efficientdet_seg(_phi, extra_top_down=False)
