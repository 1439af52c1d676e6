"""Checkpoints that carry the model's own config, so ``load_model(path)`` needs no flags.

Two formats:
- ``.safetensors``: the weights, with the config as JSON in the file's metadata.
- a torch file (``.pth``/``.pt``): ``{"model_config": …, "model": state_dict, …}``; training
  checkpoints add optimizer, scheduler, EMA and RNG states. Read with ``weights_only=True``.
Both are written to a temporary file and renamed, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdetsegError
from .files import atomic_write
from ..models import create_model
from ..models.weights import read_state_dict

CONFIG_KEY = "effdetseg_model_config"


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "model_config", None)
    if config is None:
        raise ValueError("model was not built by effdetseg.create_model: it has no model_config")
    return dict(config)


def save_model(model: nn.Module, path: str | Path) -> None:
    """Save weights and config; the suffix picks the format (``.safetensors`` or torch)."""
    model = getattr(model, "module", model)  # DDP
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = model_config(model)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(state_dict, tmp, metadata={CONFIG_KEY: json.dumps(config)}))
    else:
        torch_save_atomic({"model_config": config, "model": state_dict}, path)


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The model config stored in a checkpoint, or None for a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise EffdetsegError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:
            raise EffdetsegError(f"{path}: not a safetensors file ({e})") from None
        return json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EffdetsegError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model_config"), Mapping):
        return dict(obj["model_config"])
    return None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict into ``model``; a mismatch names the file and the keys that differ."""
    state_dict = read_state_dict(path)
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
        raise EffdetsegError(f"{path}: shapes do not fit the model{classes_hint}: {', '.join(mismatched[:5])}")
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        raise EffdetsegError(f"{path}: weights do not fit {model_config(model)['name']}: {'; '.join(detail)}")
    model.load_state_dict(state_dict)


def load_model(path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild the network from the checkpoint's own config and load its weights (eval mode)."""
    config = read_model_config(path)
    if config is None:
        raise EffdetsegError(
            f"{path}: a bare state dict with no model config; pass the model name and num_classes "
            "(e.g. `--model efficientdet_d4_seg --num_classes 21 --weights FILE`)"
        )
    config.update(overrides)
    model = create_model(**config)
    load_weights(model, path)
    return model.to(map_location).eval()
