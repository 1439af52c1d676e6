"""Deployment files: ONNX / TorchScript / OpenVINO IR export of the BatchNorm-folded network, and the parity check.

Dynamic shapes: batch, height and width are dynamic in both formats. The network pads its input
to a multiple of 128 and crops the logits back; the TorchScript tracer, the legacy ONNX exporter
(built on it) and the dynamo ONNX exporter all record that padding and cropping as computations on
the input shape, not as constants, which the parity check confirms at two input sizes and batch sizes.

OpenVINO: the ONNX graph (written as above, in memory) is read by OpenVINO's ONNX frontend and
saved as an IR folder (``model.xml`` + ``model.bin``, fp32 weights); batch, height and width stay
dynamic.

Every file carries the model record (:mod:`effdetseg.io.record`) as JSON: in the ONNX
``metadata_props``, in a TorchScript extra file and in the OpenVINO IR's ``rt_info``, all under
``effdetseg_record``, so ``Predictor`` and ``predict`` run an exported file with the checkpoint's
preprocessing and labels.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import EffdetsegError
from ..io.files import atomic_write
from ..io.record import METADATA_KEY, ModelRecord, Preprocessing, ResizeMode
from .inference import ModelRunner, Runner, network_logits, preprocess
from .runtimes import OPENVINO_BIN, OPENVINO_XML, TORCHSCRIPT_EXTRA_FILE, require_openvino

ONNX_EXPORTERS = ("dynamo", "legacy")
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PARITY_THRESHOLD = 0.999
# Tracing input: batch 2 and unequal sides, so no exporter can take a size of 1, or H == W, as a
# constant of the graph.
TRACE_SHAPE = (2, 3, 256, 384)
# Without --image, the parity check runs on a generated scene of this size (not square, not a
# multiple of the network's stride).
GENERATED_PARITY_SIZE = (300, 420)


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


def export_onnx(model: nn.Module, path: str | Path, record: ModelRecord, exporter: str = "legacy", opset: int = ONNX_OPSET) -> None:
    """Write ``model`` as ONNX with dynamic batch, height and width, and the record as metadata.

    ``legacy`` (default): the TorchScript-based exporter; PyTorch deprecates it, but it writes a
    correct dynamic graph of this network in seconds. ``dynamo``: the torch.export-based exporter
    (PyTorch's default) on :func:`export_program`, equally correct, but its symbolic-shape reasoning
    over the pad-and-crop arithmetic of six pyramid levels takes tens of seconds even for D0.
    """
    import onnx

    if exporter not in ONNX_EXPORTERS:
        raise EffdetsegError(f"--exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")
    sample = torch.randn(*TRACE_SHAPE)

    def write(tmp: str) -> None:
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
                onnx_program.save(tmp)
            else:
                torch.onnx.export(
                    model,
                    (sample,),
                    tmp,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)},
                    opset_version=opset,
                )
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, record.to_json()
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    atomic_write(path, write)


def onnx_bytes(model: nn.Module, record: ModelRecord) -> bytes:
    """The ONNX file :func:`export_onnx` writes (legacy exporter), as bytes: what ONNX Runtime and
    OpenVINO run when a checkpoint is given with ``--backend onnxruntime|openvino``."""
    with tempfile.TemporaryDirectory(prefix="effdetseg-onnx-") as work:
        path = Path(work) / "model.onnx"
        export_onnx(model, path, record)
        return path.read_bytes()


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


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the model record under ``effdetseg_record``)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EffdetsegError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
    return {entry.key: entry.value for entry in proto.metadata_props}


def export_torchscript(model: nn.Module, path: str | Path, record: ModelRecord) -> None:
    """Trace ``model`` (dynamic sizes, see the module doc) and save it with the record."""
    sample = torch.randn(*TRACE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(model, sample, check_trace=False)

        def write(tmp: str) -> None:
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_EXTRA_FILE: record.to_json()})

        atomic_write(path, write)


@dataclass(frozen=True)
class ParityResult:
    shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float  # fraction of pixels with the same argmax as PyTorch

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= PARITY_THRESHOLD

    def __str__(self) -> str:
        shape = "×".join(str(s) for s in self.shape)
        verdict = "ok" if self.passed else f"FAILED (needs ≥ {100 * PARITY_THRESHOLD:.1f} %)"
        return (
            f"input {shape}: max |Δlogit| {self.max_abs_diff:.3g}, "
            f"argmax agreement {100 * self.argmax_agreement:.3f} % {verdict}"
        )


def generated_parity_image(size: tuple[int, int] = GENERATED_PARITY_SIZE) -> np.ndarray:
    """A procedural scene (textured background, a few shapes): a parity input that needs no file."""
    from ..data.synthetic import SHAPES, render_scene

    image, _ = render_scene(seed=0, index=0, height=size[0], width=size[1], shapes=list(SHAPES))
    return image


def parity_inputs(image: np.ndarray, preprocessing: Preprocessing) -> list[torch.Tensor]:
    """Two inputs from one image, different in batch and spatial size: the image as the record's
    preprocessing makes it (batch 1), and resized keeping its aspect ratio to 3/4 of that size,
    together with its mirror image (batch 2)."""
    first = preprocess(image, preprocessing)
    side = max(32, max(first.shape[-2:]) * 3 // 4)
    second = preprocess(image, replace(preprocessing, size=(side, side), resize=ResizeMode.keep_aspect))
    return [first, torch.cat([second, second.flip(-1)])]


class ExportedModel(Protocol):
    """What the parity check needs of an exported model (a ``Predictor``): its runner and its source."""

    source: Any

    def run(self, x: torch.Tensor) -> torch.Tensor: ...


def parity_check(reference: nn.Module | Runner, exported: ExportedModel, images: list[np.ndarray], preprocessing: Preprocessing) -> list[ParityResult]:
    """Run the exported file and the PyTorch ``reference`` through the same inference path on the
    same inputs; compare logits and argmax."""
    reference_runner = ModelRunner(reference.cpu().float().eval()) if isinstance(reference, nn.Module) else reference
    results = []
    for image in images:
        for x in parity_inputs(image, preprocessing):
            with torch.inference_mode():
                expected = network_logits(reference_runner, x)
                actual = network_logits(exported.run, x).cpu()
            if actual.shape != expected.shape:
                raise EffdetsegError(f"{exported.source}: output shape {tuple(actual.shape)} differs from PyTorch's {tuple(expected.shape)}")
            results.append(
                ParityResult(
                    shape=tuple(x.shape),
                    max_abs_diff=float((actual - expected).abs().max()),
                    argmax_agreement=float((actual.argmax(1) == expected.argmax(1)).float().mean()),
                )
            )
    return results

