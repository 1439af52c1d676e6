"""The model record: what travels with every trained model, and the one place that saves and loads it.

A record (like timm's ``PretrainedCfg``) holds what a reader needs besides the weights:

- ``architecture``: the zoo name, the number of classes and the ``create_model`` overrides;
- ``preprocessing``: how an image becomes network input — the input size, the resize mode
  (``fixed``: to exactly that size, as the original project's square; ``keep_aspect``: the longer
  side to the size's longer side; ``original``: no resizing), mean, std and interpolation;
- ``labels``: the class names and colors;
- ``provenance``: where the weights come from — data preset, epoch, step, which weights (model or
  EMA), their validation metrics, the resolved training config and the command line.

Files (the suffix picks the format; writes are atomic):
- ``.safetensors``: the weights, with the record as JSON under ``effdetseg_record`` in the metadata;
- a model folder in the Hugging Face Hub layout: the record as ``config.json`` and the weights as
  ``model.safetensors`` (``config.json`` is the record read; the copy in the metadata is ignored,
  so an edited ``config.json`` takes effect); ``deploy/hub.py`` adds the model card;
- a torch file (``.pth``/``.pt``): ``{"record": {…}, "model": state_dict}``, and a training
  checkpoint adds its state (optimizer, scheduler, EMA, epoch, RNG …) beside them. Read with
  ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.

The record is data: nothing in it is ever instantiated (the model is built by name from the zoo).
``read_model_file`` reads a file once and also understands what earlier versions wrote — torch
files with ``model_config``/``labels``/``normalize``/``input_size``, safetensors with
``effdetseg_model_config`` — and bare state dicts (no record: the caller names the model).
DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes are removed here and nowhere else.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdetsegError, first_line
from ..models import create_model, model_family
from .files import atomic_write
from .labels import LabelSet

RECORD_VERSION = 1
METADATA_KEY = "effdetseg_record"  # safetensors metadata, ONNX metadata_props, TorchScript extra file name stem
LEGACY_METADATA_KEY = "effdetseg_model_config"  # safetensors files of effdetseg 0.1.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (512, 512)
SEGMENTATION_FAMILIES = ("efficientdet_seg", "efficientdet_seg_p2", "unet")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
FOLDER_RECORD = "config.json"  # a model folder (Hugging Face Hub layout): the record …
FOLDER_WEIGHTS = "model.safetensors"  # … and the weights


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
        size = _as_size(resolution)
        if size is None:
            return replace(self, resize=ResizeMode.original)
        return replace(self, size=size, resize=ResizeMode.keep_aspect if keep_aspect else ResizeMode.fixed)

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
                size=_checked_size(size, f"{field_}.size") if size is not None else None,
                resize=ResizeMode(raw.get("resize", "fixed")),
                mean=_three_floats(raw.get("mean"), f"{field_}.mean"),
                std=_three_floats(raw.get("std"), f"{field_}.std", positive=True),
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
        from .._version import __version__

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
            _architecture(raw.get("architecture"), source),
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


@dataclass
class ModelFile:
    """One model file, read once: its record (None for a bare state dict), its weights (wrapper
    prefixes removed) and, for a training checkpoint, the rest of the training state."""

    path: Path
    record: ModelRecord | None
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with one error line naming the file (no pickle advice)."""
    path = Path(path)
    if not path.is_file():
        raise EffdetsegError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code, truncated files, non-torch files
        reason = first_line(e)
        if "Weights only load failed" in reason or "weights_only" in reason:
            reason = "it holds Python objects other than tensors and plain data, which are never unpickled"
        raise EffdetsegError(f"{path}: not a loadable {what} ({reason})") from None


def read_model_file(path: str | Path) -> ModelFile:
    """Read a model file (any effdetseg checkpoint, safetensors file, model folder or bare state dict) once."""
    path = Path(path)
    if path.is_dir():
        return _read_model_folder(path)
    if not path.is_file():
        raise EffdetsegError(f"{path}: model file not found")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = read_torch_file(path, "model file")
    if not isinstance(obj, Mapping):
        raise EffdetsegError(f"{path}: expected a checkpoint or a state dict, got {type(obj).__name__}")
    obj = dict(obj)
    if "record" in obj:
        record = ModelRecord.from_dict(obj.pop("record"), path)
        state_dict = obj.pop("model", None)
    elif isinstance(obj.get("model_config"), Mapping):  # effdetseg 0.1.0
        record = legacy_record(obj, path)
        state_dict = obj.pop("model", None)
        for key in ("model_config", "labels", "normalize", "input_size", "config", "metrics", "source"):
            obj.pop(key, None)
    else:  # a bare state dict (the original project's model.pth), possibly wrapped
        record = None
        state_dict = obj.pop("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj.pop("model", None)
        if state_dict is None:
            state_dict, obj = obj, {}
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise EffdetsegError(f"{path}: expected a state dict of tensors")
    return ModelFile(path, record, strip_wrapper_prefixes(state_dict), obj)


def _read_safetensors(path: Path) -> ModelFile:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:
        raise EffdetsegError(f"{path}: not a safetensors file ({first_line(e)})") from None
    if METADATA_KEY in metadata:
        record = ModelRecord.from_json(metadata[METADATA_KEY], path)
    elif LEGACY_METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[LEGACY_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise EffdetsegError(f"{path}: corrupt {LEGACY_METADATA_KEY} metadata ({e})") from None
        record = legacy_record({"model_config": config}, path)
    else:
        record = None
    return ModelFile(path, record, strip_wrapper_prefixes(state_dict))


def _read_model_folder(folder: Path) -> ModelFile:
    """A model folder: the record from ``config.json`` (data only), the weights from ``model.safetensors``."""
    config, weights = folder / FOLDER_RECORD, folder / FOLDER_WEIGHTS
    for required in (config, weights):
        if not required.is_file():
            raise EffdetsegError(f"{required}: not found; a model folder holds {FOLDER_RECORD} and {FOLDER_WEIGHTS}")
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EffdetsegError(f"{config}: cannot read the model record ({e})") from None
    record = ModelRecord.from_json(text, config)
    return ModelFile(folder, record, _read_safetensors(weights).state_dict)


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else None
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def legacy_record(obj: Mapping[str, Any], source: str | Path) -> ModelRecord:
    """The record of what effdetseg 0.1.0 wrote: ``model_config`` with optional ``labels``
    ({names, colors}), ``normalize``, ``input_size`` (or a training ``config``), and export
    metadata (``resolution``, ``keep_aspect``, ``mean``, ``std``)."""
    architecture = _architecture(obj.get("model_config"), source)
    data = obj["config"].get("data", {}) if isinstance(obj.get("config"), Mapping) else {}
    normalize = obj.get("normalize") or data.get("normalize") or {}
    if "mean" in obj and "std" in obj:
        normalize = {"mean": obj["mean"], "std": obj["std"]}
    size = obj.get("input_size") or obj.get("resolution")
    prep = data.get("preprocessing") if isinstance(data.get("preprocessing"), Mapping) else {}
    if size is None and prep.get("resize_height") and prep.get("resize_width"):
        size = (prep["resize_height"], prep["resize_width"])
    defaults = default_preprocessing(architecture, source)
    if isinstance(normalize, Mapping) and "mean" in normalize and "std" in normalize:
        defaults = replace(
            defaults,
            mean=_three_floats(normalize["mean"], f"{source}: normalize.mean"),
            std=_three_floats(normalize["std"], f"{source}: normalize.std", positive=True),
        )
    if size is not None:
        defaults = replace(defaults, size=_checked_size(size, f"{source}: input_size"), resize=ResizeMode.fixed)
    if obj.get("keep_aspect"):
        defaults = replace(defaults, resize=ResizeMode.keep_aspect)
    elif "resolution" in obj and obj["resolution"] is None:  # exported with --resolution 0
        defaults = replace(defaults, resize=ResizeMode.original)
    labels = obj.get("labels")
    label_set = None
    if isinstance(labels, Mapping) and labels.get("names") and labels.get("colors"):
        names, colors = labels["names"], labels["colors"]
        if isinstance(names, list) and isinstance(colors, list) and len(names) == len(colors):
            label_set = LabelSet.from_dict({str(i): {"class": n, "color": list(c)} for i, (n, c) in enumerate(zip(names, colors))}, f"{source}: labels")
    metrics = obj.get("metrics") if isinstance(obj.get("metrics"), Mapping) else None
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
    source_weights = obj.get("source") if isinstance(obj.get("source"), str) else None
    return ModelRecord(architecture, defaults, label_set, Provenance(epoch=epoch, weights=source_weights, metrics=metrics))


def default_preprocessing(architecture: Architecture, source: str | Path = "record") -> Preprocessing:
    """What predict used for a file that stores no preprocessing: 512×512 and the backbone's mean/std."""
    with torch.device("meta"):
        model = architecture.build(source)
    return Preprocessing.for_model(model)


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The timm pretrained config's mean/std of the network's backbone (or of a timm classifier)."""
    cfg = getattr(getattr(model, "backbone", None), "pretrained_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


# ----------------------------------------------------------------------------- writing


def write_model_file(
    path: str | Path,
    record: ModelRecord,
    state_dict: Mapping[str, torch.Tensor],
    training_state: Mapping[str, Any] | None = None,
) -> None:
    """Write weights and record (and a training state, torch files only) atomically."""
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in strip_wrapper_prefixes(state_dict).items()}
    if path.suffix == ".safetensors":
        if training_state:
            raise ValueError("a training state is written to torch files only (.pth)")
        from safetensors.torch import save_file

        metadata = {METADATA_KEY: record.to_json()}
        atomic_write(path, lambda tmp: save_file(state_dict, tmp, metadata=metadata))
        return
    payload = {"record": record.to_dict(), "model": state_dict, **(training_state or {})}
    atomic_write(path, lambda tmp: _torch_save(payload, tmp))


class _FailureKeepingFile:
    """A file for ``torch.save`` that remembers the OS error of a failed write: torch reports a
    full disk as its own ``unexpected pos …``, which would hide the cause."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(payload: Any, path: str) -> None:
    with open(path, "wb") as file:
        target = _FailureKeepingFile(file)
        try:
            torch.save(payload, target)
        except RuntimeError:
            if target.error is not None:
                raise target.error from None
            raise


def write_model_folder(folder: str | Path, record: ModelRecord, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write a model folder: ``config.json`` (the record) and ``model.safetensors`` (the weights), each atomically."""
    folder = Path(folder)
    stamped = ModelRecord.from_dict(record.to_dict(), folder)  # version and time filled in once, for both files
    write_model_file(folder / FOLDER_WEIGHTS, stamped, state_dict)
    text = json.dumps(stamped.to_dict(), indent=2) + "\n"
    atomic_write(folder / FOLDER_RECORD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    preprocessing: Preprocessing | None = None,
    labels: LabelSet | None = None,
    provenance: Provenance | None = None,
) -> None:
    """Save weights and record; the suffix picks the format (``.safetensors`` or torch)."""
    record = ModelRecord.for_model(model, preprocessing=preprocessing, labels=labels, provenance=provenance)
    write_model_file(path, record, unwrap(model).state_dict())


# ----------------------------------------------------------------------------- building


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict into ``model``; a mismatch names the file and the keys that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if mismatched:
        num_classes = getattr(model, "num_classes", None)
        classes_hint = ""
        head = [k for k in mismatched if "classifier" in k or "upsample" in k]
        if head and num_classes is not None and state_dict[head[0]].shape[0] != num_classes:
            classes_hint = f" (the checkpoint has {state_dict[head[0]].shape[0]} classes, the model {num_classes})"
        raise EffdetsegError(f"{source}: shapes do not fit the model{classes_hint}: {', '.join(mismatched[:5])}")
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise EffdetsegError(f"{source}: weights do not fit {name}: {'; '.join(detail)}")
    model.load_state_dict(state_dict)


def build_model(file: ModelFile, *, model_name: str | None = None, num_classes: int | None = None) -> nn.Module:
    """The network of a model file with its weights, in eval mode.

    A file with a record rebuilds from it (``model_name``/``num_classes``, when given, must agree);
    a bare state dict needs ``model_name`` (and ``num_classes``, else the variant's default).
    """
    if file.record is None:
        if model_name is None:
            raise EffdetsegError(
                f"{file.path}: a bare state dict with no model config; pass the model name and num_classes "
                "(e.g. `--model efficientdet_d4_seg --num-classes 21 --weights FILE`)"
            )
        try:
            model = create_model(model_name, num_classes=num_classes)
        except Exception as e:
            message = first_line(e)
            raise EffdetsegError(f"--model: cannot build {model_name!r}: {message}") from None
        load_weights(model, file.state_dict, file.path)
        return model.eval()
    architecture = file.record.architecture
    if num_classes is not None and architecture.num_classes != num_classes:
        raise EffdetsegError(f"{file.path}: the checkpoint has {architecture.num_classes} classes, but num_classes is {num_classes}")
    if model_name is not None and architecture.name != model_name:
        raise EffdetsegError(f"{file.path}: the checkpoint holds {architecture.name}, not {model_name}")
    model = architecture.build(file.path)
    load_weights(model, file.state_dict, file.path)
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild the network from the file's record and load its weights (eval mode).

    ``overrides`` change the stored architecture before the weights are loaded (weights that do
    not fit the changed network are an error naming the keys).
    """
    file = read_model_file(path)
    if file.record is None:
        raise EffdetsegError(
            f"{path}: a bare state dict with no model config; pass the model name and num_classes "
            "(e.g. `--model efficientdet_d4_seg --num-classes 21 --weights FILE`)"
        )
    config = {**file.record.architecture.config(), **overrides}
    architecture = Architecture(config.pop("name"), int(config.pop("num_classes")), config)
    model = architecture.build(path)
    load_weights(model, file.state_dict, path)
    return model.to(map_location).eval()


def read_record(path: str | Path) -> ModelRecord | None:
    """The record of a model file (None for a bare state dict)."""
    return read_model_file(path).record


# ----------------------------------------------------------------------------- checks


# Upper bounds of the record's architecture numbers, far above every zoo model (D7: BiFPN 312 × 4,
# head 624 × 3) but low enough that a model file cannot make the builder allocate without limit:
# 10⁹ BiFPN channels would otherwise fail only at a 1.28 TB allocation, and smaller huge values could
# fill the memory first. An integer under another key (UNet ``widths`` …) is bounded by DEFAULT.
ARCHITECTURE_LIMITS = {
    "num_classes": 65536,
    "bifpn_channels": 4096,
    "head_channels": 4096,
    "bifpn_layers": 32,
    "head_layers": 32,
    "min_level": 8,
    "max_level": 10,
    "in_channels": 64,
}
DEFAULT_ARCHITECTURE_LIMIT = 8192


def _check_bounds(key: str, value: Any, source: str | Path) -> None:
    """Every integer of the record's architecture (also inside lists) in 0 … its limit."""
    if isinstance(value, (list, tuple)):
        if len(value) > 64:
            raise EffdetsegError(f"{source}: record architecture.{key} has {len(value)} entries (at most 64)")
        for item in value:
            _check_bounds(key, item, source)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    limit = ARCHITECTURE_LIMITS.get(key, DEFAULT_ARCHITECTURE_LIMIT)
    if not (0 <= value <= limit):  # also NaN
        raise EffdetsegError(f"{source}: record architecture.{key} = {value!r} is out of range (0 … {limit})")


def _architecture(raw: Any, source: str | Path) -> Architecture:
    if not isinstance(raw, Mapping):
        raise EffdetsegError(f"{source}: the model record has no architecture")
    raw = dict(raw)
    if "_target_" in raw:  # the network is built by name from the zoo; a class path is never followed
        raise EffdetsegError(f"{source}: record architecture._target_ is not allowed (the model is built by its name)")
    name, num_classes = raw.pop("name", None), raw.pop("num_classes", None)
    if not isinstance(name, str) or not name:
        raise EffdetsegError(f"{source}: record architecture.name must be a model name, got {name!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise EffdetsegError(f"{source}: record architecture.num_classes must be a positive integer, got {num_classes!r}")
    for key, value in {"num_classes": num_classes, **raw}.items():
        _check_bounds(key, value, source)
    return Architecture(name, num_classes, raw)


def _as_size(resolution: int | Sequence[int]) -> tuple[int, int] | None:
    """``N`` → (N, N), ``0`` → None (original size), ``(h, w)`` → (h, w); negative is an error."""
    if isinstance(resolution, int):
        if resolution < 0:
            raise EffdetsegError(f"resolution must be positive (0 = original size), got {resolution}")
        return None if resolution == 0 else (resolution, resolution)
    height, width = (int(v) for v in resolution)
    if height <= 0 or width <= 0:
        raise EffdetsegError(f"resolution must be positive, got {height}×{width}")
    return height, width


# The largest input side a record may ask for: 8192² pixels (67 M, under PIL's decompression-bomb
# limit) is far above any training size; a larger one would make every prediction allocate
# gigabytes for the resized image before failing, and the error would blame the batch size.
MAX_INPUT_SIDE = 8192


def _checked_size(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        if max(value) > MAX_INPUT_SIDE:
            raise EffdetsegError(f"{what}: {value[0]}×{value[1]} is larger than any network input (at most {MAX_INPUT_SIDE} per side)")
        return int(value[0]), int(value[1])
    raise EffdetsegError(f"{what}: expected [height, width] of positive integers, got {value!r}")


def _three_floats(value: Any, what: str, positive: bool = False) -> tuple[float, float, float]:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if not all(math.isfinite(v) for v in value):  # NaN would make every prediction NaN, argmax class 0
            raise EffdetsegError(f"{what}: expected 3 finite numbers, got {value!r}")
        if not positive or all(v > 0 for v in value):
            return (float(value[0]), float(value[1]), float(value[2]))
    raise EffdetsegError(f"{what}: expected 3 numbers{' > 0' if positive else ''}, got {value!r}")
