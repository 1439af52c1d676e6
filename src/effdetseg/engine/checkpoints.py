"""Training checkpoints: everything an exact resume needs, in a file ``effdetseg.load_model`` reads.

``last.pth`` = ``{"model_config", "model", "optimizer", "scheduler", "scaler", "ema", "epoch",
"global_step", "best", "rng", "labels", "normalize", "input_size"}``; ``best.pth`` holds the best
validated weights (model or EMA) with the same metadata but no optimizer state. Both are written
to a temporary file and renamed, so a kill -9 at any moment leaves the previous file intact.
Only tensors, numbers, strings, lists and dicts are stored: they load with ``weights_only=True``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.record import model_config, torch_save_atomic
from ..errors import EffdetsegError

LAST = "last.pth"
BEST = "best.pth"


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(module, "module", module)  # DDP
    module = getattr(module, "_orig_mod", module)  # torch.compile
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as weights_only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    torch_save_atomic(state, path)


def load_training_state(path: Path) -> dict[str, Any]:
    """A ``last.pth`` written by this trainer; errors name the file and what is missing."""
    if not path.is_file():
        raise EffdetsegError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EffdetsegError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    needed = ("model_config", "model", "optimizer", "epoch", "global_step", "rng")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise EffdetsegError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return state


def checkpoint_metadata(model: torch.nn.Module, labels: Any, normalize: Any, input_size: Any) -> dict[str, Any]:
    """What a reader of the checkpoint needs besides the weights: architecture, classes, input stats."""
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    return {
        "model_config": model_config(module),
        "labels": {"names": list(labels.names), "colors": [list(c) for c in labels.colors]},
        "normalize": {"mean": [float(v) for v in normalize.mean], "std": [float(v) for v in normalize.std]},
        "input_size": [int(v) for v in input_size] if input_size is not None else None,
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """``train.model.optimizer_state``: a training checkpoint's optimizer, or a bare optimizer state dict."""
    path = Path(path)
    if not path.is_file():
        raise EffdetsegError(f"train.model.optimizer_state: {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EffdetsegError(f"train.model.optimizer_state: {path} is not loadable ({type(e).__name__}: {e})") from None
    state = obj.get("optimizer", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "param_groups" not in state:
        raise EffdetsegError(f"train.model.optimizer_state: {path} holds no optimizer state")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise EffdetsegError(f"train.model.optimizer_state: {path} does not fit this model's optimizer ({e})") from None
