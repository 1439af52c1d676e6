"""Putting the plan together: read what the backbone states, fingerprint the data, apply the rules
to the config where the command line set nothing."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ...data.cache import DecodedStore
from ...data.fingerprint import FINGERPRINT_FORMATS, fits_in_memory, take_fingerprint
from ...errors import EffdetsegError
from .backbone import pretrained_backbone, read_backbone_statements
from .command_line import overridden, user_keys
from .record import Machine, Setting, TrainingPlan
from .rules import choose_batch, choose_cache, choose_ema_and_validation, choose_model, choose_optimization, choose_scale_and_crop


def plan_training(cfg: DictConfig, overrides: Sequence[str], *, decode: bool = True) -> tuple[TrainingPlan, DecodedStore | None]:
    """Read what the data and the backbone state, fingerprint the data, apply the rules to ``cfg``
    (in place; keys set by ``overrides`` win) and return the plan and the decoded data (or None)."""
    keys = user_keys(overrides)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    machine = Machine.here(str(cfg.device), processes)
    minutes = float(cfg.train.max_minutes) if cfg.train.max_minutes is not None else None
    plan = TrainingPlan(None, machine, minutes)
    store = None
    fmt = cfg.data.get("format") or cfg.data.get("name")
    if fmt in FINGERPRINT_FORMATS:
        choose_model(plan, machine, minutes)
        _apply(cfg, plan.settings, keys)  # the backbone is needed for what it states
    read_backbone_statements(cfg, keys, plan)
    if fmt in FINGERPRINT_FORMATS:
        wanted_cache = None if not overridden("data.cache", keys) else str(cfg.data.cache) == "ram"
        fingerprint, store = take_fingerprint(cfg.data, keys, cache=wanted_cache if decode else False,
                                              copies=machine.processes, threads=machine.cores)
        plan.fingerprint = fingerprint
        plan.notes += list(fingerprint.notes)
        crop = choose_scale_and_crop(plan, fingerprint, machine)
        batch = choose_batch(plan, fingerprint, machine)
        choose_optimization(plan, pretrained_backbone(cfg))
        choose_ema_and_validation(plan, fingerprint, machine, minutes, batch, crop, int(cfg.train.num_epochs))
        fits = store is not None if decode else fits_in_memory(fingerprint.decoded_bytes, machine.processes)
        choose_cache(plan, fingerprint, fits)
    _apply(cfg, plan.settings, keys)
    plan.settings = [s if not overridden(s.key, keys) else Setting(s.key, _plain(OmegaConf.select(cfg, s.key)), s.why, "yours")
                     for s in plan.settings]
    with open_dict(cfg):
        cfg.plan = {**plan.to_dict(), "text": plan.format()}
    return plan, store


def _apply(cfg: DictConfig, settings: Sequence[Setting], keys: set[str]) -> None:
    for setting in settings:
        if overridden(setting.key, keys):
            continue
        try:
            OmegaConf.update(cfg, setting.key, setting.value, merge=False, force_add=True)
        except Exception as e:  # a package bug, not user input
            raise EffdetsegError(f"training plan: cannot set {setting.key}={setting.value!r} ({e})") from None


def _plain(value: Any) -> Any:
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return getattr(value, "value", value)  # enums as their names
