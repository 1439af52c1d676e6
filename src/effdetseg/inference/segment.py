"""The one inference path: images → network input → logits (+ TTA, sliding window) → logits at each
image's original size → class ids.

``predict``, ``Predictor``, ``evaluate``, the training validation and the export parity check all
call :func:`segment`, so the mIoU that evaluate and validation report is the mIoU of what predict
writes. The steps, per image:

1. ``preprocess``: uint8 RGB → float [0, 1] → resized as the record's ``Preprocessing`` says
   (bilinear, antialiased) → normalized with its mean and std;
2. images whose network input has the same size run as one batch; nothing is padded between
   images, so a prediction does not depend on the batch it was in (the network itself pads its
   input to a multiple of its stride and crops the logits back);
3. ``network_logits``: the network, or the average over horizontal flips, scales and sliding
   windows (test-time augmentation); an input over ``WHOLE_INPUT_PIXELS`` runs in windows anyway;
4. the logits are resized (bilinear) to the image's original size, then the argmax.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.record import Preprocessing

Runner = Callable[[torch.Tensor], torch.Tensor]
# Network inputs over this many pixels run in overlapping windows even without test-time
# augmentation, so memory stays bounded on images of any size (a 4000×3000 photo at its own scale).
WHOLE_INPUT_PIXELS = 2048 * 2048
LARGE_INPUT_WINDOW = (1024, 1024)
LARGE_INPUT_OVERLAP = 0.25


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Averaged views of each input: ``scales`` (input resized by each factor), ``flip`` (also
    mirrored), ``window`` (predict inputs larger than (h, w) in windows overlapping by ``overlap``)."""

    __test__ = False  # not a pytest test class

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    window: tuple[int, int] | None = None
    overlap: float = 1 / 3

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError("scales must hold at least one factor")
        if any(s <= 0 for s in self.scales):
            raise ValueError(f"scale factors must be positive, got {self.scales}")
        if self.window is not None:
            window = (self.window, self.window) if isinstance(self.window, int) else tuple(int(v) for v in self.window)
            if len(window) != 2:
                raise ValueError(f"window must be an int or (height, width), got {self.window!r}")
            if min(window) < 1:
                raise ValueError(f"window must be positive, got {window}")
            object.__setattr__(self, "window", window)
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    @property
    def is_identity(self) -> bool:
        return not self.flip and tuple(self.scales) == (1.0,) and self.window is None

    def describe(self) -> str:
        views = (["flip"] if self.flip else []) + [f"×{s:g}" for s in self.scales]
        text = "TTA " + ", ".join(views)
        return text + (f"; sliding window {self.window[0]}×{self.window[1]}" if self.window else "")


NO_TTA = TestTimeAugmentation()


@dataclass
class Segmentation:
    """One image's result at its original size: class ids (H×W int64) and, on request, probabilities (C×H×W)."""

    labels: torch.Tensor
    probabilities: torch.Tensor | None = None


class ModelRunner:
    """A torch network as a runner: the input moved to the network's device, dtype and memory
    format (channels-last when the network holds its weights so, as ``prepare_for_inference``
    makes them on the CPU), float32 logits out."""

    def __init__(self, model: nn.Module, channels_last: bool | None = None) -> None:
        self.model = model
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        if channels_last is None:
            channels_last = holds_channels_last(model)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        return self.model(x).float()


def holds_channels_last(model: nn.Module) -> bool:
    """Whether the network's first convolution whose layout is visible (kernel > 1, more than one
    input channel per group) holds its weight channels-last."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.shape[1] > 1 and module.weight.shape[-1] > 1:
            return module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()
    return False


def as_runner(model: nn.Module | Runner) -> Runner:
    return ModelRunner(model) if isinstance(model, nn.Module) else model


def preprocess(image: np.ndarray | torch.Tensor, preprocessing: Preprocessing, device: torch.device | str = "cpu") -> torch.Tensor:
    """One uint8 image (H×W×3 array or 3×H×W tensor) → normalized float 1×3×h×w network input on ``device``."""
    if isinstance(image, np.ndarray):
        if not image.flags.writeable:
            image = image.copy()  # torch.from_numpy wants a writable array
        x = torch.from_numpy(image).permute(2, 0, 1)
    else:
        x = image
    x = x.to(device)[None].float().div_(255.0)
    height, width = x.shape[-2:]
    size = preprocessing.resized_size(height, width)
    if size != (height, width):
        x = F.interpolate(x, size=size, mode=preprocessing.interpolation, align_corners=False, antialias=True)
    mean = torch.tensor(preprocessing.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_size(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    return tuple(image.shape[:2]) if isinstance(image, np.ndarray) else tuple(image.shape[-2:])  # type: ignore[return-value]


def segment(
    model: nn.Module | Runner,
    images: Sequence[np.ndarray | torch.Tensor],
    preprocessing: Preprocessing,
    *,
    tta: TestTimeAugmentation = NO_TTA,
    batch_size: int = 8,
    amp_dtype: torch.dtype | None = None,
    probabilities: bool = False,
    device: torch.device | str | None = None,
) -> list[Segmentation]:
    """Class-id maps (and probabilities) of uint8 RGB ``images`` at their original sizes.

    ``model``: a torch network (use :func:`effdetseg.prepare_for_inference` first for speed) or a
    runner (normalized batch → logits). Preprocessing runs on ``device`` (default: the model's).
    """
    runner = as_runner(model)
    device = torch.device(device) if device is not None else getattr(runner, "device", torch.device("cpu"))
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(preprocessing.resized_size(*image_size(image)), []).append(i)
    results: list[Segmentation | None] = [None] * len(images)
    with torch.inference_mode():
        for indices in groups.values():
            for start in range(0, len(indices), max(1, batch_size)):
                chunk = indices[start : start + max(1, batch_size)]
                x = torch.cat([preprocess(images[i], preprocessing, device) for i in chunk])
                with autocast:
                    logits = network_logits(runner, x, tta)
                for row, i in enumerate(chunk):
                    scores = logits[row : row + 1].float()
                    original = image_size(images[i])
                    if tuple(scores.shape[-2:]) != original:
                        scores = F.interpolate(scores, size=original, mode="bilinear", align_corners=False)
                    results[i] = Segmentation(scores.argmax(1)[0], scores.softmax(1)[0] if probabilities else None)
    return results  # type: ignore[return-value]


def network_logits(model: nn.Module | Runner, images: torch.Tensor, tta: TestTimeAugmentation = NO_TTA) -> torch.Tensor:
    """Logits (B, C, H, W) of normalized ``images`` (B, 3, H, W), averaged over the TTA views.

    Each scale resizes the input (bilinear), is predicted (whole, or in sliding windows when
    larger than the window) and resized back to H×W; with ``flip`` also mirrored and back.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    runner = as_runner(model)
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for scale in tta.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if tta.flip else (False,):
            x = scaled.flip(-1) if mirrored else scaled
            logits = _run(runner, x, tta.window, tta.overlap).float()
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            count += 1
    assert total is not None
    return total if count == 1 else total / count


def _run(runner: Runner, images: torch.Tensor, window: tuple[int, int] | None, overlap: float) -> torch.Tensor:
    height, width = images.shape[-2:]
    if window is None and height * width > WHOLE_INPUT_PIXELS:
        window, overlap = LARGE_INPUT_WINDOW, LARGE_INPUT_OVERLAP  # activations of a whole huge input would not fit
    if window is None or (height <= window[0] and width <= window[1]):
        return runner(images)
    return _sliding_window(runner, images, window, overlap)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, length): evenly strided, the last one flush with the end."""
    if length <= window:
        return [0]
    steps = math.ceil((length - window) / stride)
    return [min(i * stride, length - window) for i in range(steps + 1)]


def _sliding_window(runner: Runner, images: torch.Tensor, window: tuple[int, int], overlap: float) -> torch.Tensor:
    height, width = images.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride_h = max(1, round(win_h * (1 - overlap)))
    stride_w = max(1, round(win_w * (1 - overlap)))
    logits: torch.Tensor | None = None
    hits = torch.zeros(1, 1, height, width, device=images.device)
    for top in window_starts(height, win_h, stride_h):
        for left in window_starts(width, win_w, stride_w):
            out = runner(images[..., top : top + win_h, left : left + win_w]).float().to(images.device)
            if logits is None:
                logits = out.new_zeros(images.shape[0], out.shape[1], height, width)
            logits[..., top : top + win_h, left : left + win_w] += out
            hits[..., top : top + win_h, left : left + win_w] += 1
    assert logits is not None
    return logits / hits
