"""Label sets: class names and colors, for masks, metrics tables, legends and the model record.

One serialization, the original project's: ``{"0": {"class": "background", "color": [0, 0, 0]}, …}``,
both in labels JSON files (``LabelSet.from_json``) and inside the model record (``to_dict``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EffdetsegError
from .files import write_text_atomic

IGNORE_INDEX = 255
_ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] = field(default=(224, 224, 192))  # VOC's boundary color

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError("a label set needs one color per class")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"0": {"class": NAME, "color": [R, G, B]}, …}``."""
        return {str(i): {"class": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.names, self.colors))}

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> LabelSet:
        """The inverse of ``to_dict``; anything malformed is one error naming ``source``."""
        if not isinstance(raw, Mapping) or not raw:
            raise EffdetsegError(f'{source}: expected {{"0": {{"class": NAME, "color": [R, G, B]}}, …}}')
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise EffdetsegError(f"{source}: class ids must be integers, got {sorted(map(str, raw))}") from None
        if ids != list(range(len(ids))):
            raise EffdetsegError(f"{source}: class ids must be 0 … {len(ids) - 1} without gaps, got {ids}")
        names, colors = [], []
        for i in ids:
            entry = raw[str(i)] if str(i) in raw else raw[i]
            if not isinstance(entry, Mapping) or "class" not in entry:
                raise EffdetsegError(f'{source}: class {i} has no "class" name')
            color = entry.get("color")
            if not (isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
                raise EffdetsegError(f'{source}: class {i} ({entry["class"]}) has no valid "color" [R, G, B]')
            names.append(str(entry["class"]))
            colors.append(tuple(color))
        return cls(tuple(names), tuple(colors))

    @classmethod
    def from_json(cls, path: str | Path) -> LabelSet:
        path = Path(path)
        return cls.from_dict(read_labels_json(path), path)

    def to_json(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def voc(cls) -> LabelSet:
        return cls.from_json(_ASSETS / "PascalVOC2012.json")

    @classmethod
    def camvid(cls) -> LabelSet:
        return cls.from_json(_ASSETS / "CamVid.json")

    @classmethod
    def generic(cls, num_classes: int) -> LabelSet:
        """Names ``class_0`` … and the VOC color map, for data without a labels file."""
        return cls(tuple(f"class_{i}" for i in range(num_classes)), tuple(voc_colormap(num_classes)))

    @classmethod
    def default_for(cls, num_classes: int) -> LabelSet:
        """VOC's names for 21 classes, CamVid's for 11, generic names otherwise."""
        if num_classes == 21:
            return cls.voc()
        if num_classes == 11:
            return cls.camvid()
        return cls.generic(num_classes)


def read_labels_json(path: Path) -> Any:
    """Parse a labels JSON; a missing or malformed file is one error naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EffdetsegError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EffdetsegError(f"{path}: not a readable labels JSON ({e})") from None


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC color map (bit-interleaved class id), for any number of classes."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors
