"""The logits line up with the input: a bright square moved across the image, the blob the model
predicts (and the blob at every pyramid level) follows it to within one pixel of that level.

Random weights would hide geometry behind noise, so every convolution becomes a box filter (all
weights equal and positive), BatchNorm the identity, and the classifier says "square" where the
response exceeds half its peak: a network whose only asymmetries are the ones its padding,
pooling and resampling introduce. The square's centre, the pyramid's blob centres (level ``l``
pixel ``j`` sits at input ``2**l·j + alpha·(2**l − 1)``, alpha the backbone's grid) and the
predicted blob's centre must agree. TF-"SAME" backbones (``tf_*``: alpha 1) and symmetric-padding
ones (alpha 0) both; ``alignment="legacy"`` (nearest upsampling, box-grid upsampler) fails it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effdetseg

# Large enough that the coarse levels resolve the square and the zero padding at the borders
# (asymmetric under TF "SAME") barely reaches the square's neighbourhood.
SIZE, SIDE = 512, 128


def box_filter_network(backbone: str, alignment: str = "grid") -> nn.Module:
    model = effdetseg.create_model(
        "efficientdet_d0_seg", num_classes=2, backbone=backbone, bifpn_channels=16, head_channels=16,
        head_layers=1, alignment=alignment,
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data.fill_(1.0 / module.weight[0].numel())
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
            module.eps = 0.0
    return model.eval()


def blob_centre(response: torch.Tensor) -> torch.Tensor:
    """(y, x) centre of the pixels above half the peak: the class-1 argmax of logits (half peak, response)."""
    logits = torch.stack([torch.full_like(response, 0.5 * float(response.max())), response])
    ys, xs = torch.nonzero(logits.argmax(0) == 1, as_tuple=True)
    return torch.stack([ys.double().mean(), xs.double().mean()])


def offsets(model: nn.Module, top: int, left: int) -> dict[str, torch.Tensor]:
    """Blob centre − square centre, in input pixels, for P2 … P5 and the output."""
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[..., top : top + SIDE, left : left + SIDE] = 1.0
    centre = torch.tensor([top + (SIDE - 1) / 2, left + (SIDE - 1) / 2], dtype=torch.float64)
    alpha = model.grid_alpha
    with torch.no_grad():
        pyramid = model.forward_features(image)
        logits = model.forward_head(pyramid, image)
    found = {}
    for level, feature in zip((2, 3, 4, 5), pyramid):
        stride = 2**level
        found[f"P{level}"] = (blob_centre(feature[0].mean(0)) * stride + alpha * (stride - 1) - centre) / stride
    found["output"] = blob_centre(logits[0, 1]) - centre
    return found


# Around the centre, moved by a few pixels in both directions (odd and even phases at every stride).
POSITIONS = [(SIZE // 2 - SIDE // 2 + d, SIZE // 2 - SIDE // 2 - d // 2) for d in (-7, -3, 0, 2, 5, 9)]


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "alpha"), [("tf_efficientnet_lite0", 1.0), ("efficientnet_b0", 0.0)])
def test_square_and_prediction_line_up_at_every_level(backbone: str, alpha: float) -> None:
    model = box_filter_network(backbone)
    assert model.grid_alpha == alpha
    for top, left in POSITIONS:
        for where, offset in offsets(model, top, left).items():
            # P-levels in their own pixels, the output in input pixels: within one pixel each.
            assert offset.abs().max() <= 1.0, f"{backbone} square at ({top}, {left}): {where} off by {offset.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "efficientnet_b0"])
def test_the_legacy_resampling_is_off_by_more_than_a_pixel(backbone: str) -> None:
    """The check can fail: nearest upsampling and the box-grid upsampler of earlier versions put
    the prediction 1.5–4 pixels off (up-left on TF backbones, down-right on the others)."""
    model = box_filter_network(backbone, alignment="legacy")
    worst = max(offsets(model, top, left)["output"].abs().max().item() for top, left in POSITIONS[:2])
    assert worst > 1.5


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_resampling_puts_a_pixel_where_the_grid_says(alpha: float) -> None:
    """Exact, without a backbone: coarse pixel i (at 2i + alpha on the fine grid) comes back there
    after ×2 upsampling, ×4 transposed convolution (at 4i + 3·alpha) and the pooling that goes up."""
    from effdetseg.layers import DownsampleToGrid, upsample_to_grid
    from effdetseg.models.efficientdet_seg import BilinearUpsampler, TransposedConvUpsampler

    coarse = torch.zeros(1, 1, 8, 8)
    coarse[0, 0, 3, 5] = 1.0

    def peak(x: torch.Tensor) -> list[int]:
        return (x[0, 0] == x[0, 0].max()).nonzero()[0].tolist()

    shift = int(alpha)
    assert peak(upsample_to_grid(coarse, [16, 16], alpha)) == [6 + shift, 10 + shift]
    with torch.no_grad():
        assert peak(TransposedConvUpsampler(1, 4, alpha)(coarse)) == [12 + 3 * shift, 20 + 3 * shift]
    assert peak(BilinearUpsampler(4, alpha)(coarse)) == [12 + 3 * shift, 20 + 3 * shift]
    fine = torch.zeros(1, 1, 16, 16)
    fine[0, 0, 6 + shift, 10 + shift] = 1.0  # a fine pixel on coarse pixel (3, 5)'s centre
    pooled = DownsampleToGrid(alpha)(fine)[0, 0]
    assert pooled[3, 5] == 1.0 and pooled.sum() == 1.0  # in that window and no other


def test_grid_of_common_backbones() -> None:
    import timm

    from effdetseg.models.backbone import grid_alpha

    assert grid_alpha(timm.create_model("tf_mobilenetv3_small_100", features_only=True)) == 1.0
    assert grid_alpha(timm.create_model("mobilenetv3_small_100", features_only=True)) == 0.0
    assert grid_alpha(timm.create_model("resnet18", features_only=True)) == 0.0
