"""The runtimes an exported network runs in, behind one call: normalized float batch → logits.

What flows: a model file's format (:func:`detect_format`) and the ``backend`` asked for
(:func:`resolve_backend`) pick a runtime; its runner takes the B×3×h×w float32 batch the one
inference path (:mod:`effdetseg.deploy.inference`) prepared and returns B×C×h×w float32 logits,
so every backend goes through the same preprocessing, resizing back and argmax.

Backends (``--backend``):
- ``torch`` (alias ``eager``): the PyTorch network, prepared by ``prepare_for_inference``;
- ``onnxruntime`` (alias ``onnx``): ONNX Runtime, on CUDA when asked for and installed, else CPU;
- ``openvino``: Intel OpenVINO on the CPU (the optional extra ``effdetseg[openvino]``), reading an
  OpenVINO IR folder (``model.xml`` + ``model.bin``) or an ONNX file;
- ``torchscript``: a traced TorchScript file;
- ``auto``: on the CPU, the fastest of the installed backends that can run the file, measured on
  the actual input (:class:`AutoRunner`: a warm-up call and a few timed calls each, once per input
  shape) — no fixed order holds across CPUs (issue 18's 2-core AVX2 CPU, D4 at 512²: OpenVINO 489 ms,
  ONNX Runtime 591 ms, eager 712 ms; the 2-core AMD EPYC of the openvino branch's table: ONNX Runtime
  245 ms, eager 308 ms, OpenVINO 435 ms); on CUDA eager PyTorch. The choice and the figures are
  said in one line, and remembered beside the model file (:class:`ChoiceCache`) for this machine
  and input shape: the next process runs that backend at once; another machine measures again.

A checkpoint run by ONNX Runtime or OpenVINO is first exported to ONNX in memory (seconds); an
OpenVINO folder runs only in OpenVINO, a TorchScript file only in TorchScript.
"""
from __future__ import annotations

import importlib.util
import json
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import EffdetsegError, first_line
from ..io.record import METADATA_KEY
from .timing import cpu_name, time_alternating

BACKENDS = ("torch", "onnxruntime", "openvino", "torchscript")
BACKEND_CHOICES = (*BACKENDS, "auto", "eager", "onnx")  # what --backend accepts
ALIASES = {"eager": "torch", "onnx": "onnxruntime"}
FORMATS = ("torch", "onnx", "openvino", "torchscript")  # what a model file is
RUNS_IN = {  # file format → the backends that can run it, the default first
    "torch": ("torch", "onnxruntime", "openvino"),
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "torchscript": ("torchscript",),
}
OPENVINO_XML = "model.xml"  # an OpenVINO IR folder: the graph …
OPENVINO_BIN = "model.bin"  # … and its weights
OPENVINO_RECORD_KEY = METADATA_KEY  # the model record, in the IR's rt_info (as in ONNX metadata)
OPENVINO_QUANTIZATION_KEY = "effdetseg_quantization"  # how an INT8 IR was made, in its rt_info
TORCHSCRIPT_EXTRA_FILE = f"{METADATA_KEY}.json"
LEGACY_EXPORT_KEY = "effdetseg"  # ONNX metadata / TorchScript extra file of effdetseg 0.1.0
OPENVINO_MISSING = "the OpenVINO backend needs the optional extra: pip install 'effdetseg[openvino]'"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> Any:
    """The ``openvino`` module, or one error line saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise EffdetsegError(OPENVINO_MISSING) from None
    return openvino


def canonical_backend(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in (*BACKENDS, "auto"):
        raise EffdetsegError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {name!r}")
    return name


def detect_format(path: str | Path) -> str:
    """``.onnx`` → onnx; an OpenVINO IR (``.xml``, or a folder holding ``model.xml``) → openvino; a
    zip archive with TorchScript code → torchscript; anything else (checkpoints, model folders) → torch."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".xml" or (path.is_dir() and (path / OPENVINO_XML).is_file()):
        return "openvino"
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()):
                return "torchscript"
    return "torch"


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs a file, and why (``auto``'s one line)."""

    backend: str  # "auto" while the candidates still have to be measured
    file_format: str
    reason: str = ""
    candidates: tuple[str, ...] = ()  # auto on the CPU: the installed backends to measure

    def describe(self) -> str:
        return f"backend {self.backend}" + (f" ({self.reason})" if self.reason else "")


def resolve_backend(requested: str | None, file_format: str, device: torch.device) -> BackendChoice:
    """The backend for a file of ``file_format`` on ``device``: the one asked for (checked against
    what can run the format), the format's own when None, with ``auto`` the installed candidates to measure (CPU) or eager PyTorch (CUDA)."""
    runs_in = RUNS_IN[file_format]
    if requested is None:
        return BackendChoice(runs_in[0], file_format)
    backend = canonical_backend(requested)
    if backend == "auto":
        if device.type == "cuda":
            candidates = ("torch", "onnxruntime") if file_format == "torch" else runs_in
            installed = [b for b in candidates if b != "openvino"] or list(runs_in)
            return BackendChoice(installed[0], file_format, f"auto: the fastest for {device.type} of those that run a {file_format} file")
        installed = tuple(b for b in runs_in if b != "openvino" or openvino_installed())
        if not installed:
            raise EffdetsegError(f"--backend auto: {OPENVINO_MISSING}")
        if len(installed) == 1:
            return BackendChoice(installed[0], file_format, f"auto: the only installed backend that runs a {file_format} file")
        # which is fastest is measured on the first input of each shape (AutoRunner)
        return BackendChoice("auto", file_format, "auto: the fastest on this CPU, measured on the first input", installed)
    if backend not in runs_in:
        raise EffdetsegError(f"--backend {backend}: a {file_format} file runs in {' or '.join(runs_in)}")
    if backend == "openvino":
        require_openvino()
    if device.type == "cuda" and backend == "openvino":
        raise EffdetsegError("--backend openvino runs on the CPU; use --device cpu (or --backend torch/onnxruntime on CUDA)")
    return BackendChoice(backend, file_format)


# ----------------------------------------------------------------------------- runners


class OnnxRunner:
    """ONNX Runtime on CUDA when asked for and available, else on the CPU (``threads``: None = its choice)."""

    def __init__(self, path: str | Path | bytes, device: torch.device, threads: int | None = None, name: str | None = None) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about the optimized graph are not the user's business
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not isinstance(path, bytes):
            check_model_files(Path(path))
        source = path if isinstance(path, bytes) else str(path)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as e:
            raise EffdetsegError(f"{name or path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")  # pre- and post-processing run in torch on the CPU
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[:1]
        return torch.from_numpy(logits).float()

    def output_channels(self) -> int | None:
        """The logits' channels (classes) as the graph states them (None: not stated)."""
        shape = self.session.get_outputs()[0].shape
        return shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None


class OpenVinoRunner:
    """OpenVINO on the CPU: an IR folder / ``.xml`` file, an ONNX file or ONNX bytes, compiled for
    latency (``PERFORMANCE_HINT=LATENCY``; ``threads``: None = OpenVINO's choice) in fp32
    (``INFERENCE_PRECISION_HINT=f32``: CPUs with AMX would otherwise run bf16 and miss the parity check).

    The graph keeps dynamic batch/height/width, but it is compiled once per input shape it meets
    (the last ``STATIC_SHAPES`` kept): with the shape fixed, OpenVINO folds the pad-to-128 and crop
    arithmetic (hundreds of ShapeOf nodes) into constants instead of evaluating it on every call.
    ``static_shapes=False`` compiles the dynamic graph once instead."""

    STATIC_SHAPES = 4

    def __init__(self, source: str | Path | bytes | Any, threads: int | None = None, name: str | None = None,
                 static_shapes: bool = True) -> None:
        ov = require_openvino()
        self.core = ov.Core()
        self.what = name or (str(source) if isinstance(source, (str, Path)) else "the network")
        if isinstance(source, (str, Path)):
            path = Path(source)
            path = path / OPENVINO_XML if path.is_dir() else path
            check_model_files(path)  # before OpenVINO parses or reads anything
        try:
            if isinstance(source, (str, Path)):
                model = self.core.read_model(str(path))
            elif isinstance(source, bytes):
                model = self.core.read_model(source, b"")  # ONNX bytes (the frontend is picked from the content)
            else:
                model = source  # an ov.Model
        except Exception as e:
            raise EffdetsegError(f"{self.what}: not a loadable OpenVINO model ({first_line(e)})") from None
        self.model = model
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.static_shapes = static_shapes
        self._requests: dict[tuple[int, ...] | None, Any] = {}
        if not static_shapes:
            self._requests[None] = self._compile(model)
        self.device = torch.device("cpu")
        self.metadata = openvino_metadata(model)

    def _compile(self, model: Any) -> Any:
        try:
            return self.core.compile_model(model, "CPU", self.config).create_infer_request()
        except Exception as e:
            raise EffdetsegError(f"{self.what}: not a loadable OpenVINO model ({first_line(e)})") from None

    def _request(self, shape: tuple[int, ...]) -> Any:
        if not self.static_shapes:
            return self._requests[None]
        request = self._requests.pop(shape, None)
        if request is None:
            model = self.model.clone()
            model.reshape({model.inputs[0]: list(shape)})
            request = self._compile(model)
            while len(self._requests) >= self.STATIC_SHAPES:
                self._requests.pop(next(iter(self._requests)))  # the least recently used shape
        self._requests[shape] = request  # most recently used last
        return request

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().float().contiguous().numpy()
        request = self._request(tuple(array.shape))
        request.infer({0: array})
        # copy: the request reuses its output buffer on the next call
        return torch.from_numpy(request.get_output_tensor(0).data.copy()).float()

    def output_channels(self) -> int | None:
        """The logits' channels (classes) as the graph states them (None: not stated)."""
        shape = self.model.outputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() > 1 and shape[1].is_static:
            return int(shape[1].get_length())
        return None


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
        :func:`~effdetseg.deploy.benchmark.time_alternating`'s, as the benchmark tables time."""
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
        from ..io.files import write_text_atomic

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
    import importlib.metadata
    import os
    import platform

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


def check_model_files(path: Path) -> None:
    """Before a runtime opens an exported file: it and, for an OpenVINO IR, its weights
    (``NAME.bin`` beside ``NAME.xml``) are regular files in the model's own folder. A FIFO or a
    device would hang the read or never end it, and a link out of the folder would make the
    runtime parse whatever file it points to; each is one line naming the file."""
    files = [path]
    if path.suffix.lower() == ".xml":
        files.append(path.with_suffix(".bin"))
    folder = path.parent.resolve()
    for file in files:
        if file.is_symlink() and file.resolve().parent != folder:
            raise EffdetsegError(f"{file}: a link to {file.resolve()}, outside the model's folder {folder}; copy the file there instead")
        if not file.exists():
            if file is path:
                raise EffdetsegError(f"{file}: model file not found")
            continue  # a missing .bin: the runtime names it
        if not file.is_file():
            raise EffdetsegError(f"{file}: not a regular file (a FIFO, a device or a folder); a model file is read whole")




def openvino_metadata(model: Any) -> dict[str, str]:
    """The effdetseg entries of an OpenVINO model's rt_info (the record, how it was quantized)."""
    metadata = {}
    for key in (OPENVINO_RECORD_KEY, OPENVINO_QUANTIZATION_KEY):
        if model.has_rt_info([key]):
            metadata[key] = model.get_rt_info([key]).astype(str)
    return metadata


class TorchScriptRunner:
    def __init__(self, path: Path, device: torch.device) -> None:
        extra = {TORCHSCRIPT_EXTRA_FILE: "", f"{LEGACY_EXPORT_KEY}.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as e:
            raise EffdetsegError(f"{path}: not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        self.device = device
        stored = {METADATA_KEY: extra[TORCHSCRIPT_EXTRA_FILE], LEGACY_EXPORT_KEY: extra[f"{LEGACY_EXPORT_KEY}.json"]}
        self.metadata = {k: v for k, v in stored.items() if v}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).float()


def stored_record_json(metadata: Mapping[str, str]) -> str | None:
    """The record JSON a runner's metadata holds under ``effdetseg_record``, if any."""
    return metadata.get(METADATA_KEY)


def legacy_export(metadata: Mapping[str, str], path: Path) -> Mapping[str, Any] | None:
    """effdetseg 0.1.0's export metadata, parsed (None when absent)."""
    if LEGACY_EXPORT_KEY not in metadata:
        return None
    try:
        stored = json.loads(metadata[LEGACY_EXPORT_KEY])
    except json.JSONDecodeError as e:
        raise EffdetsegError(f"{path}: corrupt effdetseg metadata ({e})") from None
    return stored if isinstance(stored, Mapping) else None
