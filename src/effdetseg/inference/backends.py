"""Which runtime runs a model file: its format (:func:`detect_format`) and the ``backend`` asked for
(:func:`resolve_backend`) pick one; its runner (:mod:`effdetseg.inference.runners`) takes the
B×3×h×w float32 batch the one inference path (:mod:`effdetseg.inference.segment`) prepared and
returns B×C×h×w float32 logits, so every backend goes through the same preprocessing, resizing back
and argmax.

Backends (``--backend``):
- ``torch`` (alias ``eager``): the PyTorch network, prepared by ``prepare_for_inference``;
- ``onnxruntime`` (alias ``onnx``): ONNX Runtime, on CUDA when asked for and installed, else CPU;
- ``openvino``: Intel OpenVINO on the CPU (the optional extra ``effdetseg[openvino]``), reading an
  OpenVINO IR folder (``model.xml`` + ``model.bin``) or an ONNX file;
- ``torchscript``: a traced TorchScript file;
- ``auto``: on the CPU, the fastest of the installed backends that can run the file, measured on
  the actual input (:mod:`effdetseg.inference.auto`) — no fixed order holds across CPUs; on CUDA
  eager PyTorch.

A checkpoint run by ONNX Runtime or OpenVINO is first exported to ONNX in memory (seconds,
:mod:`effdetseg.inference.onnx_graph`); an OpenVINO folder runs only in OpenVINO, a TorchScript file
only in TorchScript.
"""
from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import EffdetsegError
from ..io.record import METADATA_KEY

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
QUANTIZATION_KEY = "effdetseg_quantization"  # how an INT8 file was made: ONNX metadata, an IR's rt_info
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
