"""Pictures of label maps: color masks, overlays (alpha-blended or side by side), legends, label PNGs.

Everything works on numpy arrays: images are uint8 H×W×3 RGB, label maps are integer H×W arrays
of class ids (``label_set.ignore_index`` marks unlabelled pixels in ground-truth masks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import EffdetsegError
from ..io.files import atomic_write
from ..io.labels import LabelSet

OVERLAY_MODES = ("blend", "side")


def color_lookup(label_set: LabelSet, size: int = 256) -> np.ndarray:
    """A size×3 table indexed by class id: class colors, the ignore color at ``ignore_index``,
    black for ids that are neither."""
    table = np.zeros((max(size, label_set.num_classes), 3), dtype=np.uint8)
    table[: label_set.num_classes] = np.asarray(label_set.colors, dtype=np.uint8)
    if 0 <= label_set.ignore_index < len(table):
        table[label_set.ignore_index] = label_set.ignore_color
    return table


def color_mask(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 colors."""
    if labels.ndim != 2:
        raise ValueError(f"expected an H×W label map, got shape {labels.shape}")
    return color_lookup(label_set, int(labels.max(initial=0)) + 1)[labels]


def blend(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 − alpha) · image + alpha · mask`` (both H×W×3 uint8)."""
    if image.shape != mask_rgb.shape:
        raise ValueError(f"image {image.shape} and mask {mask_rgb.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * mask_rgb.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def side_by_side(image: np.ndarray, mask_rgb: np.ndarray) -> np.ndarray:
    """The image and its color mask next to each other (what the original project wrote)."""
    if image.shape != mask_rgb.shape:
        raise ValueError(f"image {image.shape} and mask {mask_rgb.shape} differ in size")
    return np.concatenate([image, mask_rgb], axis=1)


def overlay(image: np.ndarray, mask_rgb: np.ndarray, mode: str = "blend", alpha: float = 0.5) -> np.ndarray:
    if mode == "blend":
        return blend(image, mask_rgb, alpha)
    if mode == "side":
        return side_by_side(image, mask_rgb)
    raise ValueError(f"overlay mode must be one of {OVERLAY_MODES}, got {mode!r}")


def present_classes(labels: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """(class id, fraction of labelled pixels) of every class present, most frequent first."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    present = [(int(i), float(counts[i] / total)) for i in np.flatnonzero(counts)]
    return sorted(present, key=lambda item: -item[1])


def legend(label_set: LabelSet, class_ids: list[int], height: int) -> np.ndarray:
    """A white panel ``height`` pixels tall listing each class as a color swatch and its name.

    The font scales with ``height``; classes that do not fit one column flow into more columns.
    """
    font_size = int(np.clip(height / 24, 10, 32))
    font = ImageFont.load_default(size=font_size)
    row = int(font_size * 1.5)
    pad = max(4, font_size // 2)
    swatch = font_size
    rows_per_column = max(1, (height - 2 * pad) // row)
    names = [label_set.names[i] if i < label_set.num_classes else str(i) for i in class_ids]
    text_width = max((int(font.getlength(n)) for n in names), default=0)
    column_width = swatch + pad + text_width + 2 * pad
    num_columns = max(1, -(-len(class_ids) // rows_per_column))
    panel = Image.new("RGB", (pad + num_columns * column_width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, (class_id, name) in enumerate(zip(class_ids, names)):
        x = pad + (k // rows_per_column) * column_width
        y = pad + (k % rows_per_column) * row
        color = tuple(label_set.colors[class_id]) if class_id < label_set.num_classes else label_set.ignore_color
        draw.rectangle([x, y, x + swatch, y + swatch], fill=color, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + swatch / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(panel)


def with_legend(picture: np.ndarray, label_set: LabelSet, class_ids: list[int]) -> np.ndarray:
    """``picture`` with a legend of ``class_ids`` appended on its right."""
    panel = legend(label_set, class_ids, picture.shape[0])
    return np.concatenate([picture, panel], axis=1)


def label_image(labels: np.ndarray, label_set: LabelSet) -> Image.Image:
    """A palette PNG image: pixel values are the raw class ids, the palette shows the colors.

    Read back with ``effdetseg.data.read_mask`` (or PIL) to get the ids; image viewers show colors,
    like VOC's SegmentationClass PNGs.
    """
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError("a palette PNG holds class ids 0…255 only")
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette turns it into P
    image.putpalette(color_lookup(label_set)[:256].ravel().tolist())
    return image


def save_image(array_or_image: np.ndarray | Image.Image, path: str | Path) -> None:
    """Write an image atomically (see :func:`effdetseg.io.files.atomic_write`); the suffix picks the
    format. Failures name the file and the cause."""
    path = Path(path)
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    if path.suffix.lower() in (".jpg", ".jpeg") and image.mode == "P":
        image = image.convert("RGB")
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise EffdetsegError(f"{path}: cannot write image (unknown image suffix {path.suffix!r})")
    options = {"quality": 95} if image_format == "JPEG" else {}
    try:
        atomic_write(path, lambda tmp: image.save(tmp, format=image_format, **options))
    except (ValueError, KeyError) as e:
        raise EffdetsegError(f"{path}: cannot write image ({e})") from None
