"""Reading images and label masks with one clear error per bad file.

An image whose header claims more pixels than the limit (PIL's ``Image.MAX_IMAGE_PIXELS``,
89,478,485 by default: a decompression bomb such as a 40000×40000 PNG of a few kilobytes) is
refused before it is decoded, with one error naming the file; ``set_max_image_pixels`` changes the
limit (the ``--max-image-pixels`` flag, the ``data.max_image_pixels`` config key).
"""
from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EffdetsegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


PIXEL_LIMIT_HELP = "--max-image-pixels N / data.max_image_pixels=N, 0 for no limit"


class ImageTooLargeError(EffdetsegError):
    """An image with more pixels than the caller allows (found from its header, before decoding)."""


def set_max_image_pixels(limit: int | None, what: str = "data.max_image_pixels") -> None:
    """The largest image (width × height) any reader of this process decodes; 0 = no limit,
    None = leave it (PIL's default unless set before). DataLoader workers inherit it.
    ``what`` names the setting in the error for a negative value."""
    if limit is None:
        return
    if limit < 0:
        raise EffdetsegError(f"{what} must be 0 (no limit) or positive, got {limit}")
    Image.MAX_IMAGE_PIXELS = int(limit) or None


def max_image_pixels() -> int | None:
    return Image.MAX_IMAGE_PIXELS


@contextmanager
def open_image(source: Path | BinaryIO, name: str):
    """``Image.open`` with the pixel limit as a hard limit (PIL only warns up to twice the limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            claimed = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than the limit"
            raise ImageTooLargeError(
                f"{name}: image of {size} is over the limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); "
                f"if it is genuine, raise the limit ({PIXEL_LIMIT_HELP})"
            ) from None
    with im:
        yield im


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 H×W×3 array: EXIF orientation applied; grayscale, RGBA, palette and 16-bit converted."""
    path = Path(path)
    if not path.is_file():
        raise EffdetsegError(f"{path}: image not found")
    return _decode_rgb(path, str(path))


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """``read_image`` for the bytes of an image file (an upload); ``name`` is the file named in errors.

    With ``max_pixels``, an image whose header announces more pixels raises ``ImageTooLargeError``
    before anything is decoded.
    """
    if not data:
        raise EffdetsegError(f"{name}: empty file")
    return _decode_rgb(io.BytesIO(data), name, max_pixels)


def _decode_rgb(source: Path | BinaryIO, name: str, max_pixels: int | None = None) -> np.ndarray:
    try:
        with open_image(source, name) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {im.width}×{im.height} = {im.width * im.height / 1e6:.1f} megapixels, "
                    f"more than the limit of {max_pixels / 1e6:g}"
                )
            im.load()  # decode now so a truncated file fails here, naming the file
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                hi = max(arr.max(), 1.0)
                im = Image.fromarray((arr * (255.0 / (65535.0 if hi > 255 else 255.0))).clip(0, 255).astype(np.uint8))
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise EffdetsegError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise EffdetsegError(f"{name}: unreadable or truncated image ({e})") from None


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by extension), sorted; not recursive."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_mask(path: str | Path) -> np.ndarray:
    """A label-id mask as H×W uint8. Palette PNGs give their indices (VOC), not their colors."""
    path = Path(path)
    if not path.is_file():
        raise EffdetsegError(f"{path}: mask not found")
    try:
        with open_image(path, str(path)) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                if arr.max() > 255:
                    raise EffdetsegError(f"{path}: mask label {int(arr.max())} does not fit 0…255")
                return arr.astype(np.uint8)
            raise EffdetsegError(f"{path}: mask has mode {im.mode}; expected label ids (L or P mode)")
    except UnidentifiedImageError:
        raise EffdetsegError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise EffdetsegError(f"{path}: unreadable or truncated mask ({e})") from None
