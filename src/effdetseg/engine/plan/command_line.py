"""Which config keys the command line set: those keep the user's value, the plan's is only shown."""
from __future__ import annotations

from collections.abc import Iterable

PRESET_CHOICES = ("data", "recipe")


def user_keys(overrides: Iterable[str]) -> set[str]:
    """Config keys the command line sets (``a.b=1``, ``+a.b=1``, ``~a.b``; ``data/augmentation=x`` →
    ``data.augmentation``). Choosing the data preset (``data=folder``) sets none: it is what is planned for."""
    keys = set()
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if key and key not in PRESET_CHOICES:
            keys.add(key)
    return keys


def overridden(key: str, keys: set[str]) -> bool:
    """Whether the command line set ``key``, a node above it or a key inside it."""
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)
