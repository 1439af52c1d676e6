"""The one way a config is made: ``compose(overrides)`` for ``train``, ``train resume=``
(:func:`effdetseg.engine.experiment.train_config`), ``evaluate`` and ``data check``/``prepare``.

1. Group choices (``data=voc``, ``data/augmentation=deeplab``) pick files from the package's
   config tree, which Hydra composes (``train.yaml`` + the data preset + its recipe); or the base
   is an experiment's own ``config.yaml`` (resume, evaluate), where groups are fixed.
2. The tree is merged onto the typed schema of its data format (:mod:`.schema`): OmegaConf
   rejects unknown keys and wrong types, naming the key.
3. The overrides (Hydra's grammar: ``key=value``, ``+key=value`` in open nodes, ``~key``) are
   applied by OmegaConf in order; inside a ``_target_`` node a new key needs no ``+``, and a new
   ``_target_`` starts the node over (keeping the keys every target of its kind takes).
4. Every ``_target_`` left in the tree must be allowed (:mod:`.targets`): a config read from disk
   cannot name an arbitrary callable. ``allow_targets=[…]`` on the command line extends the list.

Errors are one line naming the key: OmegaConf's exception types map to a sentence each, with the
exception's ``full_key``; nothing parses message text.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
# Private API (as are nodes' _get_node, _metadata, _is_none below): pyproject.toml bounds omegaconf to 2.3.x.
from omegaconf._utils import _resolve_optional
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from ..errors import EffdetsegError, first_line
from .schema import DATA_SCHEMAS, TARGET_NODES, schema
from .targets import allow_targets, check_targets

CONFIG_MODULE = "effdetseg.configs"
CONFIG_NAME = "train"
ALLOW_TARGETS_KEY = "allow_targets"  # command line only: never part of the tree, never read from a file


@dataclass(frozen=True)
class Override:
    text: str
    key: str
    kind: str  # "set", "add", "force_add", "delete"
    value: Any


def compose(overrides: Sequence[str], *, base: str | Path | None = None, section: str | None = None) -> DictConfig:
    """The typed config for ``overrides`` on the package tree, or on the config file ``base``.

    ``section`` ("data") limits the overrides to that node (``evaluate``, ``data check``) and the
    ``_target_`` check to it. Errors are EffdetsegError, one line naming the key or file.
    """
    parsed = [_parse(text) for text in overrides]
    for override in parsed:
        if override.key == ALLOW_TARGETS_KEY:
            values = override.value if isinstance(override.value, (list, tuple)) else [override.value]
            allow_targets(str(v) for v in values)
    parsed = [o for o in parsed if o.key != ALLOW_TARGETS_KEY]
    if section is not None:
        stray = [o.key for o in parsed if o.key != section and not o.key.startswith(section + ".") and not o.key.startswith(section + "/")]
        if stray:
            raise EffdetsegError(f"{stray[0]}: only {section} overrides are taken here ({section}=PRESET, {section}.KEY=VALUE)")
    groups = group_options()
    choices = [o for o in parsed if o.key in groups]
    values = [o for o in parsed if o.key not in groups]
    if base is None:
        for choice in choices:
            if choice.kind != "set" or str(choice.value) not in groups[choice.key]:
                raise EffdetsegError(
                    f"{choice.text}: no such {choice.key} preset; choose from {', '.join(groups[choice.key])}"
                )
        tree, source = _hydra_compose([c.text for c in choices]), "the package configs"
    else:
        if choices:
            raise EffdetsegError(f"{choices[0].text}: config groups cannot change in {base}; set its keys instead ({choices[0].key}.KEY=VALUE)")
        tree, source = load_yaml(base), str(base)
    cfg = typed(tree, source)
    # A new _target_ first: the other overrides of that node then apply to the new target.
    for override in sorted(values, key=lambda o: not o.key.endswith("._target_")):
        _apply(cfg, override)
    for override in values:
        _trust_targets_set_by(override)
    node = cfg if section is None else cfg[section]
    _check_complete(node, section or "")
    check_targets(node, section or "")
    return cfg


def group_options() -> dict[str, list[str]]:
    """Config groups of the package tree (``data``, ``data/augmentation``, ``recipe``) and their options."""
    root = resources.files(CONFIG_MODULE)
    groups: dict[str, list[str]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                group = f"{prefix}{entry.name}"
                options = sorted(e.name[:-5] for e in entry.iterdir() if e.is_file() and e.name.endswith(".yaml"))
                if options:
                    groups[group] = options
                walk(entry, group + "/")

    walk(root, "")
    return groups


def load_yaml(path: str | Path) -> DictConfig:
    """A YAML config file (an experiment's config.yaml) as an untyped tree."""
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise EffdetsegError(f"{path}: config not found") from None
    except Exception as e:
        raise EffdetsegError(f"{path}: not a readable YAML config ({first_line(e)})") from None
    if not isinstance(cfg, DictConfig):
        raise EffdetsegError(f"{path}: expected a mapping at the top level")
    return cfg


def typed(tree: DictConfig, source: str) -> DictConfig:
    """``tree`` merged onto the schema of its data format; wrong keys and types name the key."""
    data = tree.get("data") if isinstance(tree, DictConfig) else None
    data_format = (data.get("format") or data.get("name")) if isinstance(data, DictConfig) else None
    if data_format not in DATA_SCHEMAS:
        raise EffdetsegError(f"{source}: data.format: unknown dataset format {data_format!r}; choose from {', '.join(DATA_SCHEMAS)}")
    try:
        return OmegaConf.merge(schema(str(data_format)), tree)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise EffdetsegError(f"{source}: {config_error(e)}") from None


def config_error(error: OmegaConfBaseException, key: str | None = None, cfg: DictConfig | None = None) -> str:
    """One line for an OmegaConf exception, by its type, naming ``full_key`` (or ``key``)."""
    where = key or getattr(error, "full_key", None) or "config"
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        hint = _suggestion(cfg, where) if cfg is not None else ""
        return f"unknown key '{where}'{hint}"
    if isinstance(error, MissingMandatoryValue):
        return f"{where}: no value is set"
    return f"{where}: {first_line(error)}"


# ----------------------------------------------------------------------------- internals


def _parse(text: str) -> Override:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (parsed,) = OverridesParser.create().parse_overrides([text])
    except HydraException as e:
        raise EffdetsegError(f"cannot parse override {text!r} ({first_line(e)}); the grammar is key=value, +key=value, ~key, group=option") from None
    if parsed.is_sweep_override() or parsed.package is not None:
        raise EffdetsegError(f"{text}: sweeps and @package overrides are not supported here")
    kind = "delete" if parsed.is_delete() else "force_add" if parsed.is_force_add() else "add" if parsed.is_add() else "set"
    return Override(text, parsed.key_or_group, kind, parsed.value())


def _hydra_compose(choices: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=choices)
    except (HydraException, OmegaConfBaseException) as e:  # a broken package config, not user input
        raise EffdetsegError(f"the package configs do not compose: {first_line(e)}") from None
    OmegaConf.set_struct(cfg, False)
    return cfg


_ABSENT = object()


def _apply(cfg: DictConfig, override: Override) -> None:
    key = override.key
    parent_key, _, leaf = key.rpartition(".")
    if key in TARGET_NODES or (parent_key in TARGET_NODES and leaf == "_target_"):
        _set_target_node(cfg, key, override)
        return
    parent = cfg if not parent_key else OmegaConf.select(cfg, parent_key, default=_ABSENT, throw_on_missing=False)
    if parent is _ABSENT:
        raise EffdetsegError(config_error(ConfigKeyError(key), key, cfg))
    if parent is None:
        first = "set it to a mapping first" if parent_key not in TARGET_NODES else f"set {parent_key}._target_ first"
        raise EffdetsegError(f"{key}: {parent_key} is null; {first}")
    if not isinstance(parent, DictConfig):
        raise EffdetsegError(f"{key}: {parent_key} is not a mapping")
    typed_parent = OmegaConf.get_type(parent) not in (dict, None)
    exists = leaf in parent.keys()
    if typed_parent and not exists:
        raise EffdetsegError(config_error(ConfigKeyError(key), key, cfg))
    try:
        if override.kind == "delete":
            if not exists:
                raise EffdetsegError(f"~{key}: no such key")
            if typed_parent:
                raise EffdetsegError(f"~{key}: keys of the schema cannot be deleted; set {key}=null instead")
            with open_dict(parent):
                del parent[leaf]
        elif override.kind == "add" and exists and parent[leaf] is not None and not isinstance(override.value, (dict, list)):
            raise EffdetsegError(f"+{key}: the key exists already; set it without +")
        else:
            # A mapping merges into a mapping (Hydra's rule); one that replaces a null or fills a
            # new entry of a typed dict becomes that type's node (OmegaConf cannot merge into null).
            node = parent._get_node(leaf) if exists else None
            value_type = _resolve_optional(node._metadata.ref_type if node is not None else parent._metadata.element_type)[1]
            fresh = node is None or (OmegaConf.is_config(node) and node._is_none())
            value = override.value
            if fresh and isinstance(value, dict) and dataclasses.is_dataclass(value_type):
                value = _structured(value_type, value, key)
            OmegaConf.update(cfg, key, value, merge=not fresh, force_add=override.kind != "set")
    except OmegaConfBaseException as e:
        raise EffdetsegError(config_error(e, None, cfg)) from None


def _set_target_node(cfg: DictConfig, key: str, override: Override) -> None:
    """``node=…`` or ``node._target_=…`` on a ``_target_`` node: a changed target starts the node over."""
    node_key = key if key in TARGET_NODES else key.rpartition(".")[0]
    if override.kind == "delete":
        raise EffdetsegError(f"~{key}: set {node_key}=null to disable it instead")
    old = OmegaConf.select(cfg, node_key)
    old_items = OmegaConf.to_container(old) if isinstance(old, DictConfig) else {}
    try:
        if key == node_key:  # the whole node: null, or a mapping
            OmegaConf.update(cfg, node_key, override.value, merge=False)
        elif old_items.get("_target_") != override.value:
            kept = {k: old_items[k] for k in TARGET_NODES[node_key] if k in old_items}
            OmegaConf.update(cfg, node_key, {"_target_": override.value, **kept}, merge=False)
    except OmegaConfBaseException as e:
        raise EffdetsegError(config_error(e, None, cfg)) from None


def _trust_targets_set_by(override: Override) -> None:
    """A ``_target_`` the command line sets is the user's own choice: trusted."""
    from .targets import iter_targets

    if override.key.endswith("._target_") or override.key == "_target_":
        allow_targets([str(override.value)])
    elif isinstance(override.value, (dict, list)):
        allow_targets(str(name) for _, name in iter_targets(override.value, override.key))


def _structured(value_type: type, value: dict, key: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(value_type), value)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        inner = getattr(e, "full_key", None)
        raise EffdetsegError(config_error(e, f"{key}.{inner}" if inner else key)) from None


def _check_complete(node: DictConfig, prefix: str) -> None:
    """Every value is set and every interpolation resolves, or one error names the key."""
    try:
        OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        full_key = getattr(e, "full_key", None)
        raise EffdetsegError(config_error(e, f"{prefix}.{full_key}" if prefix and full_key else None)) from None


def _suggestion(cfg: DictConfig, key: str) -> str:
    """`` (did you mean train.optimizer.lr?)`` when a known key is close to ``key``."""
    known: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for child in node.keys():
                path = f"{prefix}.{child}" if prefix else str(child)
                known.append(path)
                walk(node._get_node(child), path)

    walk(cfg, "")
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return f" (did you mean {match[0]}?)" if match else ""
