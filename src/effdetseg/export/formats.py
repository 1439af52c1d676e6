"""The files ``effdetseg export`` writes, each of the BatchNorm-folded network and each carrying the
model record (:mod:`effdetseg.io.record`) as JSON under ``effdetseg_record``, so ``Predictor`` and
``predict`` run an exported file with the checkpoint's preprocessing and labels:

- ONNX (:func:`export_onnx`): the graph of :mod:`effdetseg.inference.onnx_graph`, the record in
  its ``metadata_props``;
- TorchScript (:func:`export_torchscript`): traced with dynamic sizes, the record in an extra file;
- OpenVINO IR (:func:`export_openvino`): the ONNX graph (in memory) read by OpenVINO's ONNX
  frontend and saved as a folder (``model.xml`` + ``model.bin``, fp32 weights), batch, height and
  width dynamic, the record in its ``rt_info``.

Every file is written atomically.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..inference.backends import OPENVINO_BIN, OPENVINO_XML, TORCHSCRIPT_EXTRA_FILE, require_openvino
from ..inference.onnx_graph import ONNX_OPSET, TRACE_SHAPE, check_exporter, onnx_bytes, write_onnx
from ..io.files import atomic_write
from ..io.record import METADATA_KEY, ModelRecord


def export_onnx(model: nn.Module, path: str | Path, record: ModelRecord, exporter: str = "legacy", opset: int = ONNX_OPSET) -> None:
    """Write ``model`` as ONNX with dynamic batch, height and width, and the record as metadata
    (:func:`effdetseg.inference.onnx_graph.write_onnx`; ``exporter``: ``legacy`` or ``dynamo``)."""
    check_exporter(exporter)
    atomic_write(path, lambda tmp: write_onnx(model, tmp, record, exporter, opset))


def openvino_model(onnx: bytes | str | Path, record: ModelRecord, extra_rt_info: dict[str, str] | None = None) -> Any:
    """An ``openvino.Model`` of an ONNX graph (bytes or file), the record in its rt_info."""
    ov = require_openvino()
    core = ov.Core()
    model = core.read_model(onnx, b"") if isinstance(onnx, bytes) else core.read_model(str(onnx))
    model.set_rt_info(record.to_json(), [METADATA_KEY])
    for key, value in (extra_rt_info or {}).items():
        model.set_rt_info(value, [key])
    return model


def save_openvino(model: Any, folder: str | Path) -> Path:
    """Write an ``openvino.Model`` as an IR folder (``model.xml`` + ``model.bin``, weights as they
    are: fp32, or int8 after quantization), replacing the two files together: written into a
    temporary folder beside it, then moved in."""
    ov = require_openvino()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".openvino-", dir=folder))
    try:
        ov.save_model(model, str(tmp / OPENVINO_XML), compress_to_fp16=False)
        for name in (OPENVINO_BIN, OPENVINO_XML):  # the .bin first: an .xml never names weights that are not there
            (tmp / name).replace(folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / OPENVINO_XML


def export_openvino(model: nn.Module, folder: str | Path, record: ModelRecord) -> Path:
    """Write ``model`` (BatchNorm folded) as an OpenVINO IR folder with the record; returns model.xml."""
    require_openvino()  # before the ONNX export: a missing extra is one line, not seconds later
    return save_openvino(openvino_model(onnx_bytes(model, record), record), folder)


def export_torchscript(model: nn.Module, path: str | Path, record: ModelRecord) -> None:
    """Trace ``model`` (dynamic sizes, see the module doc) and save it with the record."""
    sample = torch.randn(*TRACE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(model, sample, check_trace=False)

        def write(tmp: str) -> None:
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_EXTRA_FILE: record.to_json()})

        atomic_write(path, write)
