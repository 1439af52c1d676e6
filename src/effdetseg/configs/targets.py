"""Which ``_target_`` a config may instantiate, and the one function that instantiates it.

Configs name classes to build — the optimizer, the scheduler, the loss terms, the albumentations
transforms — by a ``_target_``. A config read from disk (an experiment's ``config.yaml`` on
``train resume=`` or ``evaluate``) may have been written by anyone, so no ``_target_`` resolves
to an arbitrary callable. Allowed:

- ``albumentations.*`` classes that are albumentations transforms;
- ``torch.optim.*`` optimizers and ``torch.optim.lr_scheduler.*`` schedulers;
- ``torch.nn.*`` loss modules;
- ``effdetseg.*`` classes that are schedulers, modules (losses) or transforms;
- what this run's command line trusts: every ``_target_`` set by its own overrides, and the names
  given as ``allow_targets=[my.module.Thing,other.module.*]`` (exact names, or a module prefix
  ending in ``.*``). The package's shipped configs use allowed targets only.

The name is checked before anything is imported: only modules of the allowed packages are ever
imported to resolve a target, and the resolved object must then be of the allowed kind (so
``albumentations.os.system`` is refused too). Anything else is one error line naming the key and
the target (exit 2), before any object is built. Checkpoint records are data and never reach here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import EffdetsegError, first_line

# effdetseg 0.1.0 kept the training code in effdetseg.training: experiments it wrote name those.
RENAMED_TARGETS = {
    "effdetseg.training.schedulers.WarmupPolyLR": "effdetseg.engine.schedulers.WarmupPolyLR",
    "effdetseg.training.schedulers.WarmupCosineLR": "effdetseg.engine.schedulers.WarmupCosineLR",
    "effdetseg.training.losses.RegionLoss": "effdetseg.engine.losses.RegionLoss",
}
_trusted: set[str] = set()  # this process's command-line trust: exact names and "prefix." entries


@dataclass(frozen=True)
class _Rule:
    prefix: str
    kind: str
    accepts: Callable[[Any], bool]


def _subclass_of(*bases: Callable[[], tuple[type, ...]]) -> Callable[[Any], bool]:
    def accepts(obj: Any) -> bool:
        return isinstance(obj, type) and any(issubclass(obj, base) for make in bases for base in make())

    return accepts


def _transforms() -> tuple[type, ...]:
    import albumentations as A

    return (A.BasicTransform, A.BaseCompose)


def _optimizers() -> tuple[type, ...]:
    import torch

    return (torch.optim.Optimizer,)


def _schedulers() -> tuple[type, ...]:
    from torch.optim.lr_scheduler import LRScheduler

    return (LRScheduler,)


def _losses() -> tuple[type, ...]:
    from torch.nn.modules.loss import _Loss

    return (_Loss,)


def _modules() -> tuple[type, ...]:
    from torch import nn

    return (nn.Module,)


RULES = (
    _Rule("albumentations.", "an albumentations transform", _subclass_of(_transforms)),
    _Rule("torch.optim.lr_scheduler.", "a torch learning-rate scheduler", _subclass_of(_schedulers)),
    _Rule("torch.optim.", "a torch optimizer", _subclass_of(_optimizers)),
    _Rule("torch.nn.", "a torch.nn loss", _subclass_of(_losses)),
    _Rule("effdetseg.", "an effdetseg scheduler, module or transform", _subclass_of(_schedulers, _modules, _transforms)),
)
ALLOWED_TEXT = (
    "albumentations transforms, torch.optim optimizers and lr_scheduler schedulers, torch.nn losses "
    "and effdetseg schedulers, modules and transforms"
)


def allow_targets(names: Iterable[str]) -> None:
    """Trust these ``_target_`` names in this process (``pkg.module.*`` trusts a whole module)."""
    for name in names:
        name = str(name).strip()
        if name:
            _trusted.add(name[:-1] if name.endswith(".*") else name)


def trusted_by_command_line(name: str) -> bool:
    return name in _trusted or any(entry.endswith(".") and name.startswith(entry) for entry in _trusted)


def target_name(name: str) -> str:
    """The current name of a target (effdetseg 0.1.0's ``effdetseg.training.*`` names are mapped)."""
    return RENAMED_TARGETS.get(name, name)


def check_target(name: Any, key: str) -> str:
    """The (current) target name if this run may instantiate it, else one error naming ``key``."""
    if not isinstance(name, str) or not name:
        raise EffdetsegError(f"{key}._target_: expected a dotted class name, got {name!r}")
    name = target_name(name)
    if trusted_by_command_line(name):
        return name
    rule = next((r for r in RULES if name.startswith(r.prefix)), None)
    if rule is not None and all(part.isidentifier() for part in name.split(".")):
        from hydra._internal.utils import _locate

        try:
            obj = _locate(name)
        except Exception:
            obj = None
        if obj is not None and rule.accepts(obj):
            return name
        if obj is None:
            raise EffdetsegError(f"{key}._target_: {name} does not exist")
    raise EffdetsegError(
        f"{key}._target_: {name} is not allowed (a config may only instantiate {ALLOWED_TEXT}); "
        f"if you trust it, add allow_targets=[{name}] to the command line"
    )


def iter_targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(key, _target_ value) of every mapping with a ``_target_`` in a plain ``node``, at any depth."""
    if isinstance(node, Mapping):
        for child_key, value in node.items():
            if child_key == "_target_":
                yield key, value
            else:
                yield from iter_targets(value, f"{key}.{child_key}" if key else str(child_key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{key}[{i}]")


def check_targets(node: Any, key: str = "") -> None:
    """Every ``_target_`` in ``node`` (resolved) may be instantiated, or one error names the first that may not."""
    plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, (DictConfig, ListConfig)) else node
    for where, name in iter_targets(plain, key):
        check_target(name, where)


def instantiate(spec: Any, key: str, **kwargs: Any) -> Any:
    """Build ``spec`` (a mapping with ``_target_``, nested ones allowed) after checking every
    target in it; a failure is one error line ``KEY (TARGET): reason``."""
    from hydra.utils import instantiate as hydra_instantiate

    plain = OmegaConf.to_container(spec, resolve=True, enum_to_str=True) if isinstance(spec, (DictConfig, ListConfig)) else spec
    plain = _renamed(plain, key)
    target = plain.get("_target_") if isinstance(plain, Mapping) else None
    kwargs.setdefault("_convert_", "all")  # constructors get plain lists and dicts, not OmegaConf nodes
    try:
        return hydra_instantiate(plain, **kwargs)
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None:  # a constructor's own one-line error (e.g. RegionLoss's loss_type)
            if isinstance(cause, EffdetsegError):
                raise cause from None
            cause = cause.__cause__
        raise EffdetsegError(f"{key} ({target}): {first_line(e.__cause__ or e)}") from None


def _renamed(node: Any, key: str) -> Any:
    """A copy of ``node`` with every ``_target_`` checked and mapped to its current name."""
    if isinstance(node, Mapping):
        out = {}
        for child_key, value in node.items():
            if child_key == "_target_":
                out[child_key] = check_target(value, key)
            else:
                out[child_key] = _renamed(value, f"{key}.{child_key}")
        return out
    if isinstance(node, (list, tuple)):
        return [_renamed(value, f"{key}[{i}]") for i, value in enumerate(node)]
    return node
