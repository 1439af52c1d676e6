"""``--backend auto`` on the CPU: the fastest of the installed backends that can run the file,
measured on the actual input (:class:`AutoRunner`: a warm-up call and a few timed calls each, once
per input shape). No fixed order holds across CPUs, models and input sizes (see the latency
tables of the docs' Benchmarks page). The choice and the figures are said in
one line, and remembered beside the model file (:class:`ChoiceCache`) for this machine and input
shape: the next process runs that backend at once; another machine measures again.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import EffdetsegError, first_line
from ..io.files import write_text_atomic
from .backends import BACKENDS, OPENVINO_BIN
from .timing import cpu_name, time_alternating


class AutoRunner:
    """``--backend auto`` on the CPU: the fastest of several runners, measured on the actual input.

    On the first batch of each input shape every candidate (built on first use by its factory,
    e.g. exported to ONNX and compiled) runs ``warmup`` (≥ 1) untimed calls — OpenVINO compiles a shape
    there — then ``rounds`` timed calls, alternating between candidates so that a busy moment of
    the machine hits all of them, each after ``settle`` untimed calls of its own (the previous
    candidate's thread pool spin-waits for a while after its work; timed straight after ONNX
    Runtime, eager PyTorch took twice its time on 2 cores); the lowest median wins and runs that
    shape from then on. A candidate that fails to build or to run is left out, named in the note.
    ``timer`` is injectable so the choice can be tested without real timings."""

    def __init__(self, factories: Mapping[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]],
                 rounds: int = 3, warmup: int = 1, settle: int = 1, log: Callable[[str], None] | None = None,
                 timer: Callable[[], float] = time.perf_counter, cache: ChoiceCache | None = None) -> None:
        self.cache = cache
        if not factories:
            raise EffdetsegError("--backend auto: no backend to choose from")
        self.factories = dict(factories)
        self.rounds, self.warmup, self.settle = max(1, int(rounds)), max(1, int(warmup)), max(0, int(settle))
        self.log, self.timer = log, timer
        self.runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.failed: dict[str, str] = {}  # backend → why it was left out
        self.chosen: dict[tuple[int, ...], str] = {}  # input shape → backend
        self.note = "backend auto (not measured yet: chosen on the first input)"
        self.backend = "auto"  # the backend of the last shape chosen for
        self.device = torch.device("cpu")
        self.metadata: dict[str, str] = {}

    def runner(self, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The candidate's runner, built on first use; None when it failed to build (named in ``failed``)."""
        if name not in self.runners and name not in self.failed:
            try:
                # built on the first input, which Predictor runs in inference mode: folding BatchNorm
                # and exporting to ONNX need ordinary tensors
                with torch.inference_mode(False):
                    self.runners[name] = self.factories[name]()
            except Exception as e:  # noqa: BLE001 - a backend that cannot run this network is not a candidate
                self.failed[name] = first_line(e)
        return self.runners.get(name)

    def measure(self, x: torch.Tensor) -> dict[str, float]:
        """Median ms of each candidate that runs ``x``; fills ``failed`` for the others. The first
        warm-up call of each candidate also finds the ones that cannot run ``x``; the timing is
        :func:`~effdetseg.inference.timing.time_alternating`'s, as the benchmark tables time."""
        calls: dict[str, Callable[[], Any]] = {}
        for name in self.factories:
            run = self.runner(name)
            if run is None:
                continue
            try:
                run(x)
            except Exception as e:  # noqa: BLE001 - a backend that cannot run this input is not a candidate
                self.failed[name] = first_line(e)
                continue
            calls[name] = lambda run=run: run(x)
        if not calls:
            raise EffdetsegError("--backend auto: no backend could run the model: "
                                 + "; ".join(f"{k}: {v}" for k, v in self.failed.items()))
        timings = time_alternating(calls, rounds=self.rounds, warmup=self.warmup - 1, settle=self.settle, clock=self.timer)
        return {name: timing.median_ms for name, timing in timings.items()}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.chosen and self.cache is not None:
            cached = self.cache.get(shape)
            if cached is not None and cached in self.factories and self.runner(cached) is not None:
                self.chosen[shape] = cached
                self.note = (f"backend {cached} (auto: measured fastest on this machine for input {'×'.join(map(str, shape))}, "
                             f"as {self.cache.path.name} beside the model remembers)")
                if self.log is not None:
                    self.log(self.note)
        if shape not in self.chosen:
            medians = self.measure(x)
            best = min(medians, key=medians.__getitem__)
            self.chosen[shape] = best
            figures = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(medians.items(), key=lambda kv: kv[1]))
            left_out = "".join(f"; {name} left out: {why}" for name, why in self.failed.items())
            self.note = (f"backend {best} (auto: fastest measured on the CPU for input {'×'.join(map(str, shape))}, "
                         f"median of {self.rounds}: {figures}{left_out})")
            if self.cache is not None:
                self.cache.put(shape, best, medians)
            if self.log is not None:
                self.log(self.note)
        self.backend = self.chosen[shape]
        return self.runners[self.backend](x)


class ChoiceCache:
    """What ``--backend auto`` measured for a model file, kept beside it (``NAME.auto-backend.json``;
    in a model folder ``auto-backend.json``) so that the next process runs the fastest backend at
    once: per machine (CPU, cores, thread setting, runtime versions) and per input shape, for this
    version of the file (its size and time of change). Another machine, another file or an edited
    entry is measured again. Reading and writing never fail a prediction: a folder that cannot be
    written only means measuring each time."""

    def __init__(self, model: Path, threads: int | None = None) -> None:
        self.path = model / "auto-backend.json" if model.is_dir() else model.with_name(f"{model.name}.auto-backend.json")
        weights = [model / name for name in (OPENVINO_BIN, "model.safetensors")] if model.is_dir() else [model]
        stat = next((w for w in weights if w.is_file()), model).stat()
        self.model_version = f"{stat.st_size}:{stat.st_mtime_ns}"
        self.machine = machine_fingerprint(threads)

    def _read(self) -> dict[str, Any]:
        try:
            if self.path.is_symlink() or not self.path.is_file() or self.path.stat().st_size > 1 << 20:
                return {}
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, shape: tuple[int, ...]) -> str | None:
        data = self._read()
        if data.get("model") != self.model_version:
            return None
        entry = data.get("machines", {}).get(self.machine, {}) if isinstance(data.get("machines"), dict) else {}
        choice = entry.get("x".join(map(str, shape))) if isinstance(entry, dict) else None
        backend = choice.get("backend") if isinstance(choice, dict) else None
        return backend if backend in BACKENDS else None

    def put(self, shape: tuple[int, ...], backend: str, medians: Mapping[str, float]) -> None:
        data = self._read()
        if data.get("model") != self.model_version or not isinstance(data.get("machines"), dict):
            data = {"model": self.model_version, "machines": {}}
        machine = data["machines"].setdefault(self.machine, {})
        if not isinstance(machine, dict):
            machine = data["machines"][self.machine] = {}
        machine["x".join(map(str, shape))] = {"backend": backend, "median_ms": {k: round(v, 3) for k, v in medians.items()}}
        try:
            write_text_atomic(self.path, json.dumps(data, indent=1) + "\n")
        except Exception:  # noqa: BLE001 - a read-only folder: measured again next time
            pass


def machine_fingerprint(threads: int | None = None) -> str:
    """What makes a measured choice of backend valid elsewhere: the CPU, the cores this process may
    use, the thread setting and the versions of the runtimes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    versions = []
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{cpu_name()} ({platform.machine()}), {cores} cores, threads {threads or 'default'}, {', '.join(versions)}"
