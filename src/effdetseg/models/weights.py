"""Reading weight files and converting EfficientNet-PyTorch (lukemelas) naming to timm's.

The original project imported its ImageNet weights in EfficientNet-PyTorch naming
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_se_reduce`` …). timm names the same tensors
``conv_stem``, ``blocks.S.I.conv_dw``, ``se.conv_reduce`` … The conversion below is a table
from one name to the other; block ``N`` is timm's N-th block in stage order.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import EffdetsegError

# Sub-module names inside one block, EfficientNet-PyTorch → timm.
# A block without an expansion conv is timm's DepthwiseSeparableConv; with one, InvertedResidual.
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


class WeightsError(EffdetsegError, ValueError):
    """A weight file that does not fit the model; the message names the file and the keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise WeightsError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # an effdetseg training checkpoint
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def is_lukemelas_naming(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def _timm_block_names(model: nn.Module) -> list[str]:
    """timm's block prefixes (``blocks.S.I``) in stage order."""
    names = [name for name, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.\d+", name)]
    return sorted(names, key=lambda n: tuple(int(p) for p in n.split(".")[1:]))


def convert_lukemelas_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys to the timm ``model``'s keys, by name."""
    blocks = _timm_block_names(model)
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if m := _BLOCK_KEY.match(key):
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            table = _IR_BLOCK if n in expanded else _DS_BLOCK
            if n >= len(blocks) or module not in table:
                unknown.append(key)
                continue
            converted[f"{blocks[n]}.{table[module]}.{param}"] = tensor
        elif (m := _TOP_KEY.match(key)) and m.group(1) in _STEM_AND_HEAD:
            converted[f"{_STEM_AND_HEAD[m.group(1)]}.{m.group(2)}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"keys with no timm counterpart: {_preview(unknown)}")
    return converted


# Keys a classification checkpoint has and a features-only backbone does not.
_CLASSIFIER_KEYS = re.compile(r"^(conv_head|bn2|classifier|head|fc)\.")


def load_backbone_weights(model: nn.Module, path: str | Path, features_only: bool) -> None:
    """Load ImageNet weights (timm or EfficientNet-PyTorch naming) into a timm model.

    Every model tensor must be present with the right shape; a features-only backbone ignores
    the classifier's tensors. Anything else that does not fit raises one error listing the keys.
    """
    state_dict = read_state_dict(path)
    try:
        if is_lukemelas_naming(state_dict):
            state_dict = convert_lukemelas_to_timm(state_dict, model)
        if features_only:
            state_dict = {k: v for k, v in state_dict.items() if not _CLASSIFIER_KEYS.match(k)}
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state_dict and state_dict[k].shape != own[k].shape
        ]
        problems = []
        if missing:
            problems.append(f"missing {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected {_preview(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch {_preview(mismatched)}")
        if problems:
            raise WeightsError("; ".join(problems))
    except WeightsError as e:
        raise WeightsError(f"{path}: does not fit {type(model).__name__}: {e}") from None
    model.load_state_dict(state_dict)


def _preview(keys: list[str], limit: int = 8) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} key(s): " + ", ".join(keys[:limit]) + more
