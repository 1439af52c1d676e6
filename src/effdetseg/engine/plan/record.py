"""The plan as data: the machine it was made for, each setting with its reason, and the printed block."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ...data.cache import available_memory
from ...data.fingerprint import Fingerprint
from ...devices import resolve_device

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Machine:
    device: str  # cpu | cuda
    cores: int
    memory_bytes: int | None
    processes: int = 1

    @classmethod
    def here(cls, device: str = "auto", processes: int = 1) -> Machine:
        resolved = resolve_device(device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(resolved.type, cores, available_memory(), processes)

    def describe(self) -> str:
        memory = f", {self.memory_bytes / 2**30:.1f} GiB free" if self.memory_bytes else ""
        gpu = f" ({torch.cuda.get_device_name(0)})" if self.device == "cuda" and torch.cuda.is_available() else ""
        return f"{self.device}{gpu}, {self.cores} cores{memory}" + (f", {self.processes} processes" if self.processes > 1 else "")


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    why: str
    source: str = "plan"  # plan | yours (the command line set it: the plan's value is not applied)


@dataclass
class TrainingPlan:
    fingerprint: Fingerprint | None
    machine: Machine
    minutes: float | None
    settings: list[Setting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, why: str) -> None:
        self.settings.append(Setting(key, value, why))

    def value(self, key: str) -> Any:
        for setting in self.settings:
            if setting.key == key:
                return setting.value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "machine": asdict(self.machine),
            "minutes": self.minutes,
            "settings": [asdict(s) for s in self.settings],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """The block printed before training."""
        budget = f"{self.minutes:g} minutes" if self.minutes else "no time budget (train.num_epochs)"
        lines = ["training plan (every value is a config key: key=value on the command line overrides it)"]
        if self.fingerprint is not None:
            lines += [f"  data     {line}" for line in self.fingerprint.summary()]
        lines.append(f"  machine  {self.machine.describe()}; {budget}")
        width = min(44, max((len(f"{s.key}={_show(s.value)}") for s in self.settings), default=0))
        for s in self.settings:
            text = f"{s.key}={_show(s.value)}"
            why = "yours (command line)" if s.source == "yours" else s.why
            lines.append(f"  {text:<{width}}  {why}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _name(transform: dict[str, Any]) -> str:
    name = str(transform.get("_target_", "?")).rsplit(".", 1)[-1]
    inner = transform.get("transforms")
    return f"{name}({'|'.join(_name(t) for t in inner)})" if isinstance(inner, list) else name


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "[" + ",".join(_name(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
