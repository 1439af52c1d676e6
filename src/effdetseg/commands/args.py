"""What every command's argument parsing shares: one error line for bad arguments, one flag
style (kebab-case; the original project's ``--num_classes`` and ``--output_name`` spellings are
accepted too), ``--device`` and the model-source flags."""
from __future__ import annotations

import argparse
from typing import NoReturn

from ..devices import DEVICE_HELP
from ..errors import EffdetsegError
from ..io.record import parse_size


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as the command's one error line (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise EffdetsegError(message)


def add_device(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto){'; ' + what if what else ''}")


def add_model_source(parser: argparse.ArgumentParser, exported: bool = True) -> None:
    """``--checkpoint`` (an effdetseg file), or ``--model NAME --weights FILE [--num-classes N]``."""
    what = "effdetseg checkpoint (.pth/.pt/.safetensors, its record included, or a model folder of export --format hub)"
    if exported:
        what += ", or an exported .onnx / TorchScript file"
    parser.add_argument("--checkpoint", help=what)
    parser.add_argument("--weights", help="a bare state dict (the original's model.pth) or a checkpoint, with --model")
    parser.add_argument("--model", help="model name, with --weights" + (" (or an exported file, with --backend)" if exported else ""))
    parser.add_argument(
        "--num-classes", "--num_classes", dest="num_classes", type=int,
        help="number of classes (default: the checkpoint's; checked against it)",
    )


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend``: what runs the network (see :mod:`effdetseg.inference.backends`)."""
    from ..inference.backends import BACKEND_CHOICES

    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES,
        help="what runs the network: torch (eager), onnxruntime, openvino (pip install 'effdetseg[openvino]'), torchscript, "
        "or auto (the fastest installed for the device, said in one line); onnx = onnxruntime, eager = torch "
        "(default: the file's own: torch for a checkpoint, onnxruntime for .onnx, openvino for an IR folder)",
    )


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-pixels", type=int, default=None,
        help="refuse images of more pixels than this (default: PIL's 89,478,485; 0: no limit)",
    )


def apply_max_image_pixels(args: argparse.Namespace, resolution: int | None = None) -> None:
    """Set the image pixel limit of ``--max-image-pixels``, and refuse a ``--resolution`` whose
    square network input is over it (it would try to allocate that much before failing)."""
    from ..data.image_io import PIXEL_LIMIT_HELP, max_image_pixels, set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels, "--max-image-pixels")
    limit = max_image_pixels()
    if resolution and limit and resolution * resolution > limit:
        raise EffdetsegError(
            f"--resolution {resolution}: a {resolution}×{resolution} network input is over the image pixel limit of "
            f"{limit:,} ({PIXEL_LIMIT_HELP})"
        )


def positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise EffdetsegError(f"{name} must be at least {minimum}, got {value}")


def parse_tta(text: str | None) -> tuple[bool, tuple[float, ...]]:
    """``flip,0.75,1.0,1.25`` → (True, (0.75, 1.0, 1.25)); scales default to (1.0,)."""
    if not text:
        return False, (1.0,)
    flip, scales = False, []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token.lower() in ("flip", "hflip"):
            flip = True
            continue
        try:
            scale = float(token)
        except ValueError:
            raise EffdetsegError(f"--tta: {token!r} is neither 'flip' nor a scale factor") from None
        if not 0.1 <= scale <= 8:
            raise EffdetsegError(f"--tta: scale {scale} is outside 0.1…8")
        scales.append(scale)
    return flip, tuple(scales) or (1.0,)


def parse_window(slide: bool, window: str | None, default_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The sliding window: ``--window SIZE|HxW``, or the training size with ``--slide``; None: whole images."""
    if window is None:
        if not slide:
            return None
        if default_size is None:
            raise EffdetsegError("--slide: no training size known; give the window, e.g. --window 512")
        return default_size
    try:
        size = parse_size(window)
    except ValueError:
        raise EffdetsegError(f"--window: expected SIZE or HxW, got {window!r}") from None
    if min(size) < 32:
        raise EffdetsegError(f"--window: expected SIZE or HxW of at least 32 pixels, got {window!r}")
    return size


def add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", default=None, help="test-time augmentation, a comma list: 'flip' and/or scale factors, e.g. flip,0.75,1.0,1.25")
    parser.add_argument("--slide", action="store_true", help="sliding-window inference (windows of the training size)")
    parser.add_argument("--window", default=None, help="sliding window SIZE or HxW (implies --slide)")


def tta_from_args(args: argparse.Namespace, training_size: tuple[int, int] | None):
    """The ``TestTimeAugmentation`` of ``--tta``, ``--slide`` and ``--window``."""
    from ..inference.segment import TestTimeAugmentation

    flip, scales = parse_tta(args.tta)
    return TestTimeAugmentation(flip=flip, scales=scales, window=parse_window(args.slide, args.window, training_size))
