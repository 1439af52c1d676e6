"""Training checkpoints: everything an exact resume needs, in a model file any reader understands.

``last.pth`` = the model record and weights (:mod:`effdetseg.io.record`) plus the training state:
``optimizer``, ``scheduler``, ``scaler``, ``ema`` (weights), ``epoch``, ``global_step``, ``best``
and ``rng`` (every process's generator states). ``best.pth`` = the best validated weights (model or
EMA) with a record whose provenance holds their metrics. Both are written atomically, so a kill -9
at any moment leaves the previous file intact; only tensors, numbers, strings, lists and dicts are
stored, so they load with ``weights_only=True``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EffdetsegError
from ..io.record import ModelFile, read_model_file, read_torch_file

LAST = "last.pth"
BEST = "best.pth"
TRAINING_STATE = ("optimizer", "epoch", "global_step", "rng")


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


def load_training_state(path: Path) -> ModelFile:
    """A ``last.pth`` written by this trainer (or by effdetseg 0.1.0); errors name the file and what is missing."""
    if not path.is_file():
        raise EffdetsegError(f"{path}: no checkpoint to resume from")
    file = read_model_file(path)
    missing = [key for key in TRAINING_STATE if key not in file.training_state]
    if file.record is None or missing:
        raise EffdetsegError(f"{path}: not a training checkpoint (missing {', '.join(missing) or 'the model record'})")
    return file


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """``train.model.optimizer_state``: a training checkpoint's optimizer, or a bare optimizer state dict."""
    obj = read_torch_file(path, "train.model.optimizer_state file")
    state = obj.get("optimizer", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "param_groups" not in state:
        raise EffdetsegError(f"train.model.optimizer_state: {path} holds no optimizer state")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise EffdetsegError(f"train.model.optimizer_state: {path} does not fit this model's optimizer ({e})") from None
