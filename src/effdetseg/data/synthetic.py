"""Procedural shape scenes: segmentation that needs shape, not color, and no files.

Each scene is a textured background with a few filled shapes. The class of a pixel is the
shape of the object on top there (circle, square, triangle, ring, cross, …); every object's
color is drawn independently of its class, so a model has to look at outlines and context.
A scene is a pure function of (seed, index), so runs and workers agree on every sample;
``build_synthetic`` makes the train/val datasets of the ``synthetic`` preset (different seeds).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ..errors import EffdetsegError
from .build import num_classes_of, require
from .datasets import AugmentedDataset
from .transforms import SegmentationTransform

# Outline polygons on the unit circle, scaled and rotated per object.
_Poly = list[tuple[float, float]]


def _regular_polygon(sides: int, start_angle: float) -> _Poly:
    return [(math.cos(start_angle + 2 * math.pi * k / sides), math.sin(start_angle + 2 * math.pi * k / sides)) for k in range(sides)]


def _cross_polygon(arm: float = 0.36) -> _Poly:
    a = arm
    return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]


def _draw_polygon(canvas: np.ndarray, poly: _Poly, cx: float, cy: float, radius: float, angle: float, value) -> None:
    c, s = math.cos(angle), math.sin(angle)
    pts = np.array([[cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)] for x, y in poly])
    # Sub-pixel coordinates (shift=4) keep small shapes from snapping to the pixel grid.
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def _draw_circle(canvas: np.ndarray, cx: float, cy: float, radius: float, value) -> None:
    cv2.circle(canvas, (round(cx * 16), round(cy * 16)), round(radius * 16), value, thickness=-1, lineType=cv2.LINE_8, shift=4)


def _draw_ring(canvas: np.ndarray, cx: float, cy: float, radius: float, value, hole) -> None:
    _draw_circle(canvas, cx, cy, radius, value)
    _draw_circle(canvas, cx, cy, radius * 0.55, hole)


# name -> draw(canvas, cx, cy, radius, angle, value, hole); the hole argument only matters for rings.
_Draw = Callable[[np.ndarray, float, float, float, float, object, object], None]
SHAPES: dict[str, _Draw] = {
    "circle": lambda cv, x, y, r, a, v, h: _draw_circle(cv, x, y, r, v),
    "square": lambda cv, x, y, r, a, v, h: _draw_polygon(cv, _regular_polygon(4, math.pi / 4), x, y, r, a, v),
    "triangle": lambda cv, x, y, r, a, v, h: _draw_polygon(cv, _regular_polygon(3, -math.pi / 2), x, y, r * 1.15, a, v),
    "ring": lambda cv, x, y, r, a, v, h: _draw_ring(cv, x, y, r, v, h),
    "cross": lambda cv, x, y, r, a, v, h: _draw_polygon(cv, _cross_polygon(), x, y, r, a, v),
    "hexagon": lambda cv, x, y, r, a, v, h: _draw_polygon(cv, _regular_polygon(6, 0.0), x, y, r, a, v),
}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled smoothly, values in [0, 1]."""
    grid = rng.random((cells, cells, channels), dtype=np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return out.reshape(height, width, channels)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured float32 background: blotches, stripes and grain around a random base color."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    blotches = (_smooth_noise(rng, height, width, int(rng.integers(3, 9)), 3) - 0.5) * rng.uniform(40, 110)
    img = base + blotches
    if rng.random() < 0.5:  # stripes at a random angle and period: edges that belong to no object
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period))
        img += (stripes * rng.uniform(8, 30))[..., None] * rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    return img


def _object_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random RGB color that stands out from the background's mean color (independent of class)."""
    for _ in range(20):
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(color - avoid).sum() > 150:
            return color
    return (255.0 - avoid).astype(np.float32)


def render_scene(
    seed: int,
    index: int,
    height: int,
    width: int,
    shapes: Sequence[str],
    objects_per_image: tuple[int, int] = (1, 4),
    radius_range: tuple[float, float] = (0.12, 0.26),
    max_rotation: float = 180.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene as (image uint8 H×W×3, mask uint8 H×W); class ``k`` is ``shapes[k - 1]``, 0 is background."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    bg_mean = image.reshape(-1, 3).mean(0)

    placed: list[tuple[float, float, float]] = []
    count = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    for _ in range(count):
        for _attempt in range(30):
            radius = rng.uniform(*radius_range) * side
            margin = 1.15 * radius  # whole shapes only: a shape cut by the border can look like another
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            # Overlap is allowed, but not so much that an occluded object turns into an unreadable sliver.
            if all(math.hypot(cx - x, cy - y) > 0.75 * (radius + r) for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        class_id = int(rng.integers(1, len(shapes) + 1))
        angle = math.radians(rng.uniform(-max_rotation, max_rotation))
        draw = SHAPES[shapes[class_id - 1]]

        # Paint the object's footprint into a scratch mask, then fill it with a shaded, grainy color.
        footprint = np.zeros((height, width), np.uint8)
        draw(footprint, cx, cy, radius, angle, 1, 0)
        inside = footprint.astype(bool)
        color = _object_color(rng, bg_mean)
        shade = (_smooth_noise(rng, height, width, 3, 1) - 0.5) * rng.uniform(0, 60)
        image[inside] = (color + shade)[inside]
        mask[inside] = class_id

    image += rng.normal(0.0, rng.uniform(3, 12), size=image.shape).astype(np.float32)  # sensor grain
    return np.clip(image, 0, 255).astype(np.uint8), mask


def check_shapes(shapes: Sequence[str], num_classes: int, key: str = "data") -> None:
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise EffdetsegError(f"{key}.shapes: unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
    if len(set(shapes)) != len(shapes):
        raise EffdetsegError(f"{key}.shapes: each shape may appear once, got {list(shapes)}")
    if num_classes != len(shapes) + 1:
        raise EffdetsegError(
            f"{key}.num_classes is {num_classes} but {key}.shapes lists {len(shapes)} shapes (+ background = {len(shapes) + 1})"
        )


class SyntheticShapes(AugmentedDataset):
    """``length`` procedural scenes; item ``i`` is the same for the same seed on every run and worker."""

    def __init__(
        self,
        length: int,
        seed: int,
        height: int,
        width: int,
        shapes: Sequence[str],
        transform: SegmentationTransform,
        objects_per_image: tuple[int, int] = (1, 4),
        radius_range: tuple[float, float] = (0.12, 0.26),
        max_rotation: float = 180.0,
    ) -> None:
        self.length, self.seed, self.height, self.width = length, seed, height, width
        self.shapes = list(shapes)
        self.num_classes = len(self.shapes) + 1
        self.transform = transform
        self.objects_per_image = objects_per_image
        self.radius_range = radius_range
        self.max_rotation = max_rotation

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return render_scene(
            self.seed, index, self.height, self.width, self.shapes, self.objects_per_image, self.radius_range, self.max_rotation
        )

    def sample_id(self, index: int) -> str:
        return f"synthetic_{self.seed}_{index:06d}"


def build_synthetic(data_cfg: DictConfig, split: str, transform: SegmentationTransform) -> Dataset:
    shapes = list(require(data_cfg, "shapes"))
    check_shapes(shapes, num_classes_of(data_cfg))
    # Scenes are drawn at the training size itself: no resize step.
    height = int(require(data_cfg, "preprocessing.resize_height"))
    width = int(require(data_cfg, "preprocessing.resize_width"))
    if height < 32 or width < 32:
        raise EffdetsegError(f"data.preprocessing: synthetic scenes need at least 32×32 pixels, got {height}×{width}")
    objects = tuple(int(v) for v in require(data_cfg, "objects_per_image"))
    radius = tuple(float(v) for v in require(data_cfg, "radius_range"))
    if len(objects) != 2 or not 0 <= objects[0] <= objects[1]:
        raise EffdetsegError(f"data.objects_per_image must be [min, max] with 0 <= min <= max, got {list(objects)}")
    if len(radius) != 2 or not 0 < radius[0] <= radius[1] <= 0.4:
        raise EffdetsegError(f"data.radius_range must be [min, max] fractions of the image side in (0, 0.4], got {list(radius)}")
    max_rotation = float(data_cfg.get("max_rotation", 180.0))
    if not 0.0 <= max_rotation <= 180.0:
        raise EffdetsegError(f"data.max_rotation must be in 0…180 degrees, got {max_rotation}")
    length = int(require(data_cfg, f"{split}_samples"))
    seed = int(require(data_cfg, "seed" if split == "train" else "val_seed"))
    return SyntheticShapes(length, seed, height, width, shapes, transform, objects, radius, max_rotation)
