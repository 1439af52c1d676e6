"""Composing the Hydra config (``data=voc data.root=PATH …``) outside a Hydra app, with one-line errors."""
from __future__ import annotations

import re
from importlib import resources

from omegaconf import DictConfig

from ..errors import EffdetsegError

CONFIG_MODULE = "effdetseg.configs"


def default_config_name() -> str:
    """``train`` (the full training config) when it exists, else the data group alone."""
    return "train" if resources.files(CONFIG_MODULE).joinpath("train.yaml").is_file() else "data_only"


def _one_line(error: Exception) -> str:
    text = str(error)
    if m := re.search(r"Could not override '([^']+)'", text):
        key = m.group(1)
        return f"unknown config key {key} (to add a new key use +{key}=VALUE)"
    if m := re.search(r"Could not find '([^']+)/([^'/]+)'", text):
        group, option = m.group(1), m.group(2)
        options = re.findall(r"^\s+(\S+)$", text.split("Available options", 1)[-1], flags=re.M)
        return f"{group}={option}: no such preset" + (f"; choose from {', '.join(options)}" if options else "")
    if m := re.search(r"Key '([^']+)' is not in struct", text):
        return f"unknown config key {m.group(1)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first


def compose_config(overrides: list[str], config_name: str | None = None) -> DictConfig:
    """The composed config for ``overrides``; bad overrides raise EffdetsegError naming the key."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base=None):
            return compose(config_name or default_config_name(), overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise EffdetsegError(_one_line(e)) from None
