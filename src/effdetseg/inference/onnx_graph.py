"""The network as an ONNX graph, with dynamic batch, height and width and the model record in its
metadata: what ONNX Runtime and OpenVINO run. A checkpoint given with ``--backend onnxruntime`` or
``openvino`` is traced in memory (:func:`onnx_bytes`); ``effdetseg export`` writes the same graph to
a file (:func:`effdetseg.export.formats.export_onnx`).

Dynamic shapes: the network pads its input to a multiple of 128 and crops the logits back; the
TorchScript tracer, the legacy ONNX exporter (built on it) and the dynamo ONNX exporter all record
that padding and cropping as computations on the input shape, not as constants, which the export's
parity check confirms at two input sizes and batch sizes.

The record (:mod:`effdetseg.io.record`) is stored as JSON in the ONNX ``metadata_props`` under
``effdetseg_record`` (:func:`onnx_metadata` reads it back).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import EffdetsegError
from ..io.record import METADATA_KEY, ModelRecord

ONNX_EXPORTERS = ("dynamo", "legacy")
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Tracing input: batch 2 and unequal sides, so no exporter can take a size of 1, or H == W, as a
# constant of the graph.
TRACE_SHAPE = (2, 3, 256, 384)


def check_exporter(exporter: str) -> None:
    if exporter not in ONNX_EXPORTERS:
        raise EffdetsegError(f"--exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")


def export_program(model: nn.Module, min_size: int = 32, max_size: int = 2048) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` with dynamic batch, height and width (each side in [min_size, max_size]).

    The network pads to a multiple of its coarsest stride and crops back; under PyTorch's default
    reasoning a size of 1 is special-cased, so the padding arithmetic's guards pin the sizes to the
    sample's. Size-oblivious reasoning treats every backed size as ≥ 2 and the program stays
    general: it runs at any size in the range and matches eager.
    """
    from torch.fx.experimental import _config as fx_config

    height = torch.export.Dim("height", min=min_size, max=max_size)
    width = torch.export.Dim("width", min=min_size, max=max_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sample = torch.randn(*TRACE_SHAPE)
    with fx_config.patch(backed_size_oblivious=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        return torch.export.export(model.eval(), (sample,), dynamic_shapes={"images": {0: batch, 2: height, 3: width}})


def write_onnx(model: nn.Module, path: str | Path, record: ModelRecord, exporter: str = "legacy", opset: int = ONNX_OPSET) -> None:
    """Trace ``model`` into the ONNX file ``path`` (dynamic batch, height and width; the record as
    metadata; checked by ``onnx.checker``). Not atomic: :func:`effdetseg.export.formats.export_onnx`
    is the writer of files others read.

    ``legacy`` (default): the TorchScript-based exporter; PyTorch deprecates it, but it writes a
    correct dynamic graph of this network in seconds. ``dynamo``: the torch.export-based exporter
    (PyTorch's default) on :func:`export_program`, equally correct, but its symbolic-shape reasoning
    over the pad-and-crop arithmetic of six pyramid levels takes tens of seconds even for D0.
    """
    import onnx

    check_exporter(exporter)
    sample = torch.randn(*TRACE_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if exporter == "dynamo":
            onnx_program = torch.onnx.export(
                export_program(model),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                verbose=False,
            )
            onnx_program.save(str(path))
        else:
            torch.onnx.export(
                model,
                (sample,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)},
                opset_version=opset,
            )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, record.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_bytes(model: nn.Module, record: ModelRecord) -> bytes:
    """The ONNX graph of :func:`write_onnx` (legacy exporter) as bytes: what ONNX Runtime and
    OpenVINO run when a checkpoint is given with ``--backend onnxruntime|openvino``."""
    with tempfile.TemporaryDirectory(prefix="effdetseg-onnx-") as work:
        path = Path(work) / "model.onnx"
        write_onnx(model, path, record)
        return path.read_bytes()


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the model record under ``effdetseg_record``)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EffdetsegError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
    return {entry.key: entry.value for entry in proto.metadata_props}
