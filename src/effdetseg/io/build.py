"""The network of a model file: rebuilt by name from its record (or from the model named for a bare
state dict), its weights loaded; a mismatch is one error naming the file and the keys."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdetsegError, first_line
from ..models import create_model
from .model_files import ModelFile, read_model_file
from .record import Architecture


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


def model_from_file(file: ModelFile, *, model_name: str | None = None, num_classes: int | None = None) -> nn.Module:
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
