"""Reading images and label masks with one clear error per bad file."""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EffdetsegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageTooLargeError(EffdetsegError):
    """An image with more pixels than the caller allows (found from its header, before decoding)."""


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
        with Image.open(source) as im:
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
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
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
        with Image.open(path) as im:
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
