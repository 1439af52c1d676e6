"""One runner per runtime: normalized float batch → float32 logits, and the metadata the file
carries (the model record under ``effdetseg_record``, and how an INT8 file was made).

ONNX Runtime (:class:`OnnxRunner`), OpenVINO (:class:`OpenVinoRunner`) and TorchScript
(:class:`TorchScriptRunner`) run exported files or, for the first two, the ONNX graph of a
checkpoint made in memory; eager PyTorch is :class:`effdetseg.inference.segment.ModelRunner`.
Before a runtime opens a file, :func:`check_model_files` makes sure it reads nothing but that file.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import EffdetsegError, first_line
from ..io.model_files import legacy_record
from ..io.record import METADATA_KEY, ModelRecord
from .backends import (
    LEGACY_EXPORT_KEY,
    OPENVINO_RECORD_KEY,
    OPENVINO_XML,
    QUANTIZATION_KEY,
    TORCHSCRIPT_EXTRA_FILE,
    require_openvino,
)


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
    for key in (OPENVINO_RECORD_KEY, QUANTIZATION_KEY):
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


def export_record(metadata: Mapping[str, str], path: Path) -> ModelRecord | None:
    """The record an exported file carries in its metadata (None for files exported by other tools)."""
    if METADATA_KEY in metadata:
        return ModelRecord.from_json(metadata[METADATA_KEY], path)
    legacy = legacy_export(metadata, path)
    return legacy_record(legacy, path) if legacy is not None and "model_config" in legacy else None


def legacy_export(metadata: Mapping[str, str], path: Path) -> Mapping[str, Any] | None:
    """effdetseg 0.1.0's export metadata, parsed (None when absent)."""
    if LEGACY_EXPORT_KEY not in metadata:
        return None
    try:
        stored = json.loads(metadata[LEGACY_EXPORT_KEY])
    except json.JSONDecodeError as e:
        raise EffdetsegError(f"{path}: corrupt effdetseg metadata ({e})") from None
    return stored if isinstance(stored, Mapping) else None
