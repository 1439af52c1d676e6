"""Composing and checking the Hydra config of ``train`` and ``evaluate``.

``compose_config`` builds the package's config tree with command-line overrides (the same
grammar as a Hydra app: ``key=value``, ``+new.key=value``, ``data=voc``); Hydra's multi-line
errors are turned into one line that names the key. ``apply_overrides`` applies overrides to a
config loaded from an experiment (resume, evaluate), where groups are already chosen.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..errors import EffdetsegError

CONFIG_MODULE = "effdetseg.configs"


def compose_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """The composed config (struct mode: an unknown key fails), or an EffdetsegError naming the key.

    Overrides inside a ``train.*`` node with a ``_target_`` (optimizer, scheduler, loss terms) are
    applied afterwards by ``apply_target_overrides``: the target's constructor checks those keys.
    """
    parsed = _parse(overrides)
    outside_train = [o for o, p in zip(overrides, parsed) if not p.key_or_group.startswith("train.")]
    target_nodes = _target_nodes(_compose(outside_train, config_name))
    plain, targeted = [], []
    for text, override in zip(overrides, parsed):
        (targeted if _node_of(override.key_or_group, target_nodes) else plain).append(text)
    cfg = _compose(plain, config_name)
    apply_target_overrides(cfg, [p for p in parsed if _node_of(p.key_or_group, target_nodes)], target_nodes)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise EffdetsegError(composition_error(e)) from None


def _parse(overrides: Sequence[str]) -> list:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise EffdetsegError(composition_error(e)) from None


def _target_nodes(cfg: DictConfig) -> list[str]:
    """Dotted keys of the mappings under ``train`` that are built by ``_target_``."""
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                found.append(prefix)
                return
            for key in node.keys():
                walk(node._get_node(key), f"{prefix}.{key}")

    if isinstance(cfg.get("train"), DictConfig):
        walk(cfg.train, "train")
    return found


def _node_of(key: str, target_nodes: Sequence[str]) -> str | None:
    """The target node a key lies inside (not the node itself: ``train.scheduler=null`` is plain)."""
    for node in target_nodes:
        if key.startswith(node + "."):
            return node
    return None


def _accepted_arguments(target: str) -> set[str] | None:
    """Keyword arguments of ``target``'s constructor, or None when it takes ``**kwargs`` or is unknown."""
    import inspect

    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def apply_target_overrides(cfg: DictConfig, parsed: Sequence[Any], target_nodes: Sequence[str]) -> None:
    """Overrides inside ``_target_`` nodes: new keys need no ``+`` (the target's constructor checks
    them when the object is built), and when ``_target_`` changes, the node's other keys that the
    new target does not take are dropped, e.g. ``train.scheduler._target_=torch.optim.lr_scheduler.ExponentialLR
    train.scheduler.gamma=0.975`` drops the default scheduler's ``warmup_epochs`` and ``power``.
    """
    by_node: dict[str, list[Any]] = {}
    for override in parsed:
        by_node.setdefault(_node_of(override.key_or_group, target_nodes) or "", []).append(override)
    for node_key, overrides in by_node.items():
        node = OmegaConf.select(cfg, node_key)
        if not isinstance(node, DictConfig):
            raise EffdetsegError(f"{overrides[0].key_or_group}: {node_key} is null; set {node_key}._target_ first")
        subkeys = {o.key_or_group[len(node_key) + 1 :].split(".")[0] for o in overrides}
        new_target = next((o.value() for o in overrides if o.key_or_group == f"{node_key}._target_"), None)
        with open_dict(node):
            if new_target is not None and new_target != node.get("_target_"):
                accepted = _accepted_arguments(str(new_target))
                if accepted is not None:
                    for key in [k for k in node.keys() if k != "_target_" and k not in accepted and k not in subkeys]:
                        del node[key]
            for override in overrides:
                key = override.key_or_group
                if override.is_delete():
                    parent, _, leaf = key.rpartition(".")
                    parent_node = OmegaConf.select(cfg, parent)
                    if isinstance(parent_node, DictConfig) and leaf in parent_node:
                        with open_dict(parent_node):
                            del parent_node[leaf]
                    continue
                OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)


def composition_error(error: BaseException) -> str:
    """One line out of Hydra's multi-line composition errors."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if m := re.match(r"Could not override '([^']+)'", first):
        key = m.group(1)
        return f"unknown key '{key}' (to add a key the config does not have, write +{key}=VALUE)"
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path:")[0], flags=re.M)
        choices = f"; choose from {', '.join(options)}" if options else ""
        return f"{group}={option}: no such {group} preset{choices}"
    if isinstance(error, MissingConfigException):
        return first
    if isinstance(error, OverrideParseException):
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("See https://")]
        if lines and lines[0].startswith("Error parsing override"):
            return f"cannot parse override {lines[0].split(' ', 3)[-1]}: {' '.join(lines[1:])}".rstrip(": ")
        return f"cannot parse override: {' '.join(lines)} (grammar: key=value, +key=value, group=option)"
    if m := re.search(r"full_key: (\S+)", text):
        return f"{m.group(1)}: {first}"
    return first


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], where: str) -> DictConfig:
    """Apply ``key=value`` overrides to an already composed config (``where`` names it in errors).

    Group choices (``data=voc``) cannot change here: the groups were resolved when the run began.
    """
    if not overrides:
        return cfg
    parsed = _parse(overrides)
    OmegaConf.set_struct(cfg, True)
    target_nodes = _target_nodes(cfg)
    apply_target_overrides(cfg, [p for p in parsed if _node_of(p.key_or_group, target_nodes)], target_nodes)
    for override in parsed:
        key = override.key_or_group
        if _node_of(key, target_nodes):
            continue
        if override.is_delete():
            raise EffdetsegError(f"~{key}: keys cannot be deleted from {where}")
        value = override.value()
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            if override.is_add() or override.is_force_add():
                with open_dict(cfg):
                    OmegaConf.update(cfg, key, value, merge=True, force_add=True)
                continue
            raise EffdetsegError(f"unknown key '{key}' in {where} (to add a key, write +{key}=VALUE)")
        if "." not in key and isinstance(cfg[key], DictConfig) and not isinstance(value, dict):
            raise EffdetsegError(f"{key}={value}: config groups cannot change in {where}; set its keys instead ({key}.KEY=VALUE)")
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


_MISSING = object()


def load_config(path: str | Path) -> DictConfig:
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise EffdetsegError(f"{path}: config not found") from None
    except Exception as e:
        raise EffdetsegError(f"{path}: not a readable YAML config ({e})") from None
    if not isinstance(cfg, DictConfig):
        raise EffdetsegError(f"{path}: expected a mapping at the top level")
    OmegaConf.set_struct(cfg, True)
    return cfg


def _require(cfg: DictConfig, key: str, kind: type | tuple[type, ...], check: Any = None, hint: str = "") -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok or (check is not None and not check(value)):
        raise EffdetsegError(f"{key} must be {hint or kinds[0].__name__}, got {value!r}")
    return value


def check_train_config(cfg: DictConfig) -> None:
    """Type and range checks that would otherwise fail deep inside the loop."""
    positive = lambda v: v > 0  # noqa: E731
    _require(cfg, "train.num_epochs", int, positive, "a positive integer")
    _require(cfg, "train.loss.accumulation_iter", int, positive, "a positive integer")
    _require(cfg, "validation.epoch_step", int, positive, "a positive integer")
    _require(cfg, "data.batch_size", int, positive, "a positive integer")
    _require(cfg, "validation.batch_size", int, positive, "a positive integer")
    _require(cfg, "data.num_workers", int, lambda v: v >= 0, "a non-negative integer")
    _require(cfg, "train.model.name", str, None, "a model name (see `effdetseg models`)")
    _require(cfg, "train.model.num_classes", int, positive, "a positive integer")
    _require(cfg, "seed", int, None, "an integer")
    _require(cfg, "train.amp", bool, None, "true or false")
    _require(cfg, "deterministic", bool, None, "true or false")
    if cfg.train.amp_dtype not in ("auto", "bfloat16", "float16"):
        raise EffdetsegError(f"train.amp_dtype must be auto, bfloat16 or float16, got {cfg.train.amp_dtype!r}")
    clip = cfg.train.clip_grad_norm
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise EffdetsegError(f"train.clip_grad_norm must be a positive number or null, got {clip!r}")
    if cfg.train.model.num_classes != cfg.data.num_classes:
        raise EffdetsegError(
            f"train.model.num_classes ({cfg.train.model.num_classes}) differs from data.num_classes ({cfg.data.num_classes})"
        )
    for key in ("train.optimizer",):
        node = OmegaConf.select(cfg, key)
        if node is None or "_target_" not in node:
            raise EffdetsegError(f"{key} needs a _target_ (e.g. torch.optim.AdamW)")


def train_config(overrides: Sequence[str]) -> tuple[DictConfig, Path | None]:
    """The config of ``effdetseg train OVERRIDES`` and the experiment to resume (or None).

    With ``resume=experiments/NAME`` the experiment's own config.yaml is the base (its data and
    model are fixed); the other overrides apply on top, e.g. ``train.num_epochs=40`` to go on longer.
    """
    from ..engine.experiment import CONFIG, resolve_resume_dir

    resume_value = None
    others = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "resume":
            resume_value = value
        else:
            others.append(override)
    if resume_value and resume_value.lower() not in ("null", "none"):
        experiment_dir = resolve_resume_dir(resume_value)
        cfg = load_config(experiment_dir / CONFIG)
        apply_overrides(cfg, others, where=str(experiment_dir / CONFIG))
        cfg.resume = str(experiment_dir)
        check_train_config(cfg)
        return cfg, experiment_dir
    cfg = compose_config(others)
    check_train_config(cfg)
    return cfg, None
