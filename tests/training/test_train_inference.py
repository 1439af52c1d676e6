"""network_logits: flip and multi-scale test-time augmentation, sliding windows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdetseg import create_model
from effdetseg.inference.segment import TestTimeAugmentation as TTA
from effdetseg.inference.segment import network_logits, window_starts


def pointwise_model(classes: int = 3) -> nn.Module:
    """A 1×1 convolution: every output pixel depends on its input pixel only."""
    torch.manual_seed(0)
    return nn.Conv2d(3, classes, 1).eval()


def test_plain_call_is_the_model_itself() -> None:
    model = nn.Conv2d(3, 2, 3, padding=1).eval()
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(network_logits(model, x), model(x))


def test_flip_averages_the_mirrored_prediction() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, (1, 3), padding=(0, 1)).eval()  # not mirror-symmetric
    x = torch.randn(1, 3, 8, 10)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        out = network_logits(model, x, TTA(flip=True))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, model(x), atol=1e-3)


def test_multi_scale_resizes_in_and_out() -> None:
    model = nn.Conv2d(3, 2, 3, padding=1).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        small = F.interpolate(model(F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)), size=(16, 16), mode="bilinear", align_corners=False)
        expected = (small + model(x)) / 2
        out = network_logits(model, x, TTA(scales=(0.5, 1.0)))
    assert out.shape == (1, 2, 16, 16)
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("size,window", [((50, 70), 32), ((33, 64), (16, 24)), ((20, 20), 64)])
def test_sliding_window_equals_whole_image_for_a_pointwise_model(size, window) -> None:
    model = pointwise_model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert torch.allclose(network_logits(model, x, TTA(window=window)), model(x), atol=1e-5)


def test_windows_cover_the_image_flush_with_the_end() -> None:
    assert window_starts(100, 40, 27) == [0, 27, 54, 60]
    assert window_starts(40, 40, 27) == [0]
    assert window_starts(30, 40, 27) == [0]


def test_sliding_window_counts_each_window_once() -> None:
    calls = []

    class Spy(nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return x[:, :1] * 0 + 1

    out = network_logits(Spy(), torch.randn(1, 3, 64, 100), TTA(window=32, overlap=0.5))
    assert torch.allclose(out, torch.ones_like(out))
    assert len(calls) == len(window_starts(64, 32, 16)) * len(window_starts(100, 32, 16))
    assert set(calls) == {(32, 32)}


@pytest.mark.slow
def test_efficientdet_with_all_augmentations_keeps_the_input_size() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=4, bifpn_channels=16, head_channels=16).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        out = network_logits(model, x, TTA(flip=True, scales=(0.75, 1.25), window=64))
    assert out.shape == (1, 4, 70, 90) and torch.isfinite(out).all()


def test_bad_arguments() -> None:
    model = pointwise_model()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="scale factors must be positive"):
        network_logits(model, x, TTA(scales=(0.0,)))
    with pytest.raises(ValueError, match="window must be"):
        network_logits(model, x, TTA(window=(8, 8, 8)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        network_logits(model, x[0])
