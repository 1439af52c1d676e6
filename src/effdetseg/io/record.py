"""The model record: what travels with every trained model, as typed, checked data.

A record (like timm's ``PretrainedCfg``) holds what a reader needs besides the weights:

- ``architecture``: the zoo name, the number of classes and the ``create_model`` overrides;
- ``preprocessing``: how an image becomes network input — the input size, the resize mode
  (``fixed``: to exactly that size, as the original project's square; ``keep_aspect``: the longer
  side to the size's longer side; ``original``: no resizing), mean, std and interpolation;
- ``labels``: the class names and colors;
- ``provenance``: where the weights come from — data preset, epoch, step, which weights (model or
  EMA), their validation metrics, the resolved training config and the command line.

The record is data: nothing in it is ever instantiated (the model is built by name from the zoo),
and every field read from a file is checked (:mod:`effdetseg.io.checks`). The files that carry it
are read and written by :mod:`effdetseg.io.model_files`; the network of a file is rebuilt by
:mod:`effdetseg.io.build`.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn

from .._version import __version__
from ..errors import EffdetsegError, first_line
from ..models import create_model, model_family
from .checks import checked_architecture, checked_size, three_floats
from .labels import LabelSet

RECORD_VERSION = 1
METADATA_KEY = "effdetseg_record"  # safetensors metadata, ONNX metadata_props, TorchScript extra file name stem
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (512, 512)
SEGMENTATION_FAMILIES = ("efficientdet_seg", "efficientdet_seg_p2", "unet")
_SIZE = re.compile(r"(\d+)\s*(?:[xX×]\s*(\d+))?")


class ResizeMode(str, Enum):
    """How an image is resized to the network input (see :class:`Preprocessing`)."""

    fixed = "fixed"
    keep_aspect = "keep_aspect"
    original = "original"


@dataclass(frozen=True)
class Architecture:
    """What ``create_model`` needs to rebuild the network: name, classes, overrides."""

    name: str
    num_classes: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module) -> Architecture:
        config = getattr(unwrap(model), "model_config", None)
        if config is None:
            raise ValueError("model was not built by effdetseg.create_model: it has no model_config")
        config = dict(config)
        return cls(str(config.pop("name")), int(config.pop("num_classes")), config)

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> Architecture:
        """The record's ``architecture`` mapping; every malformed or out-of-range field is one error naming ``source``."""
        name, num_classes, overrides = checked_architecture(raw, source)
        return cls(name, num_classes, overrides)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, **self.overrides}

    @property
    def is_segmentation(self) -> bool:
        return model_family(self.name) in SEGMENTATION_FAMILIES

    def build(self, source: str | Path = "record") -> nn.Module:
        """The network with fresh weights; a name or override the zoo does not know is one error."""
        # Weights come from the file: a stored path to pretrained weights is never followed.
        overrides = {k: v for k, v in self.overrides.items() if k not in ("backbone_pretrained", "pretrained")}
        try:
            return create_model(self.name, num_classes=self.num_classes, **overrides)
        except Exception as e:  # unknown names, bad overrides, …: whatever the zoo says, on one line
            message = first_line(e)
            raise EffdetsegError(f"{source}: cannot build {self.name!r}: {message}") from None


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes network input.

    ``size`` (height, width) is the training input size: the network input with ``fixed``, the
    longer side's target with ``keep_aspect`` (its longer side), and only the default sliding
    window with ``original``. Images are scaled to [0, 1], resized (bilinear, antialiased), then
    normalized with ``mean`` and ``std``.
    """

    size: tuple[int, int] | None = DEFAULT_INPUT_SIZE
    resize: ResizeMode = ResizeMode.fixed
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "resize", ResizeMode(self.resize))
        if self.size is None and self.resize is not ResizeMode.original:
            raise ValueError(f"resize mode {self.resize.value} needs a size")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input size of an image of ``height`` × ``width``."""
        if self.resize is ResizeMode.original or self.size is None:
            return height, width
        if self.resize is ResizeMode.keep_aspect:
            scale = max(self.size) / max(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        return self.size

    def with_resolution(self, resolution: int | Sequence[int] | None, keep_aspect: bool = False) -> Preprocessing:
        """``--resolution``/``--keep-aspect`` of predict: N → N×N (fixed, or the longer side with
        keep_aspect), 0 → the original size, None → this preprocessing (keep_aspect still applies)."""
        if resolution is None:
            if keep_aspect and self.size is not None:
                return replace(self, resize=ResizeMode.keep_aspect)
            return self
        if isinstance(resolution, int):
            if resolution == 0:
                return replace(self, resize=ResizeMode.original)
            if resolution < 0:
                raise EffdetsegError(f"resolution must be positive (0 = original size), got {resolution}")
        height, width = parse_size(resolution)
        if height <= 0 or width <= 0:
            raise EffdetsegError(f"resolution must be positive, got {height}×{width}")
        return replace(self, size=(height, width), resize=ResizeMode.keep_aspect if keep_aspect else ResizeMode.fixed)

    def describe(self) -> str:
        if self.resize is ResizeMode.original or self.size is None:
            return "original size"
        size = f"{self.size[0]}×{self.size[1]}"
        return f"longer side {max(self.size)}" if self.resize is ResizeMode.keep_aspect else size

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size) if self.size is not None else None,
            "resize": self.resize.value,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> Preprocessing:
        field_ = f"{source}: record preprocessing"
        if not isinstance(raw, Mapping):
            raise EffdetsegError(f"{field_}: expected a mapping, got {type(raw).__name__}")
        size = raw.get("size")
        try:
            return cls(
                size=checked_size(size, f"{field_}.size") if size is not None else None,
                resize=ResizeMode(raw.get("resize", "fixed")),
                mean=three_floats(raw.get("mean"), f"{field_}.mean"),
                std=three_floats(raw.get("std"), f"{field_}.std", positive=True),
                interpolation=str(raw.get("interpolation", "bilinear")),
            )
        except ValueError as e:
            raise EffdetsegError(f"{field_}: {e}") from None

    @classmethod
    def for_model(cls, model: nn.Module, size: tuple[int, int] | None = DEFAULT_INPUT_SIZE) -> Preprocessing:
        """Defaults for a network: its backbone's timm mean/std (ImageNet's without one)."""
        mean, std = model_mean_std(model)
        return cls(size=size, resize=ResizeMode.fixed if size is not None else ResizeMode.original, mean=mean, std=std)


@dataclass(frozen=True)
class Provenance:
    """Where the weights come from. All optional: ``save_model`` of an untrained network has none."""

    data: str | None = None  # data preset name
    epoch: int | None = None
    global_step: int | None = None
    weights: str | None = None  # "model" or "ema"
    metrics: Mapping[str, Any] | None = None  # validation metrics of these weights (with the confusion matrix)
    config: Mapping[str, Any] | None = None  # the resolved training config: data, never instantiated
    command: tuple[str, ...] | None = None
    effdetseg_version: str | None = None
    created: str | None = None  # ISO 8601 time of writing

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command) if self.command is not None else None
        return data

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> Provenance:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise EffdetsegError(f"{source}: record provenance: expected a mapping, got {type(raw).__name__}")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if known.get("command") is not None:
            known["command"] = tuple(str(a) for a in known["command"])
        return cls(**known)


@dataclass(frozen=True)
class ModelRecord:
    architecture: Architecture
    preprocessing: Preprocessing
    labels: LabelSet | None = None
    provenance: Provenance = field(default_factory=Provenance)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        *,
        preprocessing: Preprocessing | None = None,
        labels: LabelSet | None = None,
        provenance: Provenance | None = None,
    ) -> ModelRecord:
        return cls(
            Architecture.of(model),
            preprocessing if preprocessing is not None else Preprocessing.for_model(unwrap(model)),
            labels,
            provenance if provenance is not None else Provenance(),
        )

    def to_dict(self) -> dict[str, Any]:
        provenance = self.provenance
        if provenance.effdetseg_version is None or provenance.created is None:
            provenance = replace(
                provenance,
                effdetseg_version=provenance.effdetseg_version or __version__,
                created=provenance.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
        return {
            "version": RECORD_VERSION,
            "architecture": self.architecture.config(),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": self.labels.to_dict() if self.labels is not None else None,
            "provenance": provenance.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> ModelRecord:
        """A record from its dict; every malformed field is one error naming ``source`` and the field."""
        if not isinstance(raw, Mapping):
            raise EffdetsegError(f"{source}: the model record is not a mapping")
        version = raw.get("version")
        if not isinstance(version, int) or version < 1:
            raise EffdetsegError(f"{source}: the model record has no valid version")
        if version > RECORD_VERSION:
            raise EffdetsegError(f"{source}: written by a newer effdetseg (record version {version}); upgrade to read it")
        labels = raw.get("labels")
        return cls(
            Architecture.from_dict(raw.get("architecture"), source),
            Preprocessing.from_dict(raw.get("preprocessing"), source),
            LabelSet.from_dict(labels, f"{source}: record labels") if labels is not None else None,
            Provenance.from_dict(raw.get("provenance"), source),
        )

    @classmethod
    def from_json(cls, text: str, source: str | Path) -> ModelRecord:
        try:
            raw = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise EffdetsegError(f"{source}: the model record is not valid JSON ({e})") from None
        return cls.from_dict(raw, source)


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The timm pretrained config's mean/std of the network's backbone (or of a timm classifier)."""
    cfg = getattr(getattr(model, "backbone", None), "pretrained_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else None
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def parse_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """A size as (height, width): ``512`` or ``"512"`` → (512, 512); ``"384x512"`` (or ``384×512``)
    or ``(384, 512)`` → (384, 512). The one parser of sizes, for the record and every command-line
    option that takes one; a value that is no size is a ``ValueError``. The numbers come back as
    given: which are allowed (zero, a minimum) is the caller's rule."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 512 or 384x512, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected a size such as 512 or 384x512, got {value!r}")
        height = int(match.group(1))
        return height, int(match.group(2) or height)
    parts = tuple(int(v) for v in value)
    if len(parts) != 2:
        raise ValueError(f"expected a size of (height, width), got {value!r}")
    return parts[0], parts[1]
