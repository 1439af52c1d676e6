"""Model files: the one place that reads and writes them, what earlier versions wrote included.

Files (the suffix picks the format; writes are atomic):
- ``.safetensors``: the weights, with the record (:mod:`effdetseg.io.record`) as JSON under
  ``effdetseg_record`` in the metadata;
- a model folder in the Hugging Face Hub layout: the record as ``config.json`` and the weights as
  ``model.safetensors`` (``config.json`` is the record read; the copy in the metadata is ignored,
  so an edited ``config.json`` takes effect); ``sharing/hub.py`` adds the model card;
- a torch file (``.pth``/``.pt``): ``{"record": {…}, "model": state_dict}``, and a training
  checkpoint adds its state (optimizer, scheduler, EMA, epoch, RNG …) beside them. Read with
  ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.

``read_model_file`` reads a file once and also understands what effdetseg 0.1.0 wrote
(:func:`legacy_record`) — torch files with ``model_config``/``labels``/``normalize``/``input_size``,
safetensors with ``effdetseg_model_config`` — and bare state dicts (no record: the caller names the
model). DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes are removed here and nowhere else.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdetsegError, first_line
from .checks import checked_size, three_floats
from .files import atomic_write
from .labels import LabelSet
from .record import METADATA_KEY, Architecture, ModelRecord, Preprocessing, Provenance, ResizeMode, unwrap

LEGACY_METADATA_KEY = "effdetseg_model_config"  # safetensors files of effdetseg 0.1.0
FOLDER_RECORD = "config.json"  # a model folder (Hugging Face Hub layout): the record …
FOLDER_WEIGHTS = "model.safetensors"  # … and the weights
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


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


def read_record(path: str | Path) -> ModelRecord | None:
    """The record of a model file (None for a bare state dict)."""
    return read_model_file(path).record


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


# ----------------------------------------------------------------------------- effdetseg 0.1.0


def legacy_record(obj: Mapping[str, Any], source: str | Path) -> ModelRecord:
    """The record of what effdetseg 0.1.0 wrote: ``model_config`` with optional ``labels``
    ({names, colors}), ``normalize``, ``input_size`` (or a training ``config``), and export
    metadata (``resolution``, ``keep_aspect``, ``mean``, ``std``)."""
    architecture = Architecture.from_dict(obj.get("model_config"), source)
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
            mean=three_floats(normalize["mean"], f"{source}: normalize.mean"),
            std=three_floats(normalize["std"], f"{source}: normalize.std", positive=True),
        )
    if size is not None:
        defaults = replace(defaults, size=checked_size(size, f"{source}: input_size"), resize=ResizeMode.fixed)
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
