"""One table of backends per model: the same network in eager PyTorch, ONNX Runtime, OpenVINO and
INT8, against smp's FPN on the same encoder, timed alternately in one process.

What flows: a zoo model (random weights, or a checkpoint's) → BatchNorm folded → one ONNX graph in
memory (:func:`effdetseg.inference.onnx_graph.onnx_bytes`) → each backend's runner (the runners
``Predictor`` uses, :mod:`effdetseg.inference.runners`) → :func:`time_alternating` over all of them
and over smp's FPN (eager at its best — channels-last, inference mode — and in OpenVINO) on one
1×3×R×R input, every runtime on the same number of threads → per backend: the median, its ratio to
our eager model, its ratio to the FPN in eager PyTorch and in OpenVINO, and the fraction of pixels
whose argmax agrees with our eager model on real (or generated) images preprocessed as ``predict``
does.

Backends: ``eager``; ``onnxruntime``; ``openvino``; ``int8`` (OpenVINO INT8 by NNCF with the
default recipe of :mod:`effdetseg.export.quantize_openvino`); ``onnxruntime-int8`` (ONNX Runtime's
static QDQ quantization, :mod:`effdetseg.export.quantize_onnx`). The INT8 ones are calibrated on
``calibration`` images and their agreement is measured on other images of the same source.
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import EffdetsegError
from ..export.calibration import ImageSource, split_images
from ..export.formats import openvino_model
from ..export.parity import generated_parity_image
from ..export.quantize_onnx import quantize_onnx
from ..export.quantize_openvino import NncfRecipe, quantize_openvino
from ..inference.onnx_graph import onnx_bytes
from ..inference.prepare import fold_batchnorm, prepare_for_inference
from ..inference.runners import OnnxRunner, OpenVinoRunner
from ..inference.segment import ModelRunner, preprocess
from ..inference.timing import Timing, time_alternating, torch_threads
from ..io.record import ModelRecord, ResizeMode
from .model_table import smp_candidates

TABLE_BACKENDS = ("eager", "onnxruntime", "openvino", "int8", "onnxruntime-int8")
INT8_BACKENDS = ("int8", "onnxruntime-int8")


@dataclass
class BackendRow:
    model: str
    backend: str
    median_ms: float
    vs_eager: float  # median / our eager median (< 1: faster)
    vs_fpn_eager: float | None  # median / smp FPN's eager median
    vs_fpn_openvino: float | None  # median / smp FPN's OpenVINO median
    agreement: float | None  # fraction of pixels whose argmax matches our eager model's


def parse_backends(text: str) -> tuple[str, ...]:
    """``eager,openvino`` → ("eager", "openvino"); eager is always first (the ratios need it)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    names = ["onnxruntime" if n == "onnx" else n for n in names]
    unknown = [n for n in names if n not in TABLE_BACKENDS]
    if unknown:
        raise EffdetsegError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(TABLE_BACKENDS)}")
    return tuple(dict.fromkeys(["eager", *names]))


def smp_fpn(backbone: str, num_classes: int) -> nn.Module:
    """smp's FPN on the encoder matching our ``backbone`` (random weights, eval mode)."""
    (candidate,) = [c for c in smp_candidates([backbone], num_classes) if c.label.startswith("smp FPN")]
    return candidate.build().eval()


def _onnx_bytes_plain(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    """A network other than ours (smp's FPN) as ONNX bytes, dynamic batch/height/width."""
    with tempfile.TemporaryDirectory(prefix="effdetseg-onnx-") as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(work) / "model.onnx"
        torch.onnx.export(
            model, (torch.randn(*shape),), str(path), dynamo=False, input_names=["images"], output_names=["logits"],
            dynamic_axes={n: {0: "batch", 2: "height", 3: "width"} for n in ("images", "logits")}, opset_version=18,
        )
        return path.read_bytes()


def _agreement(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
               inputs: Sequence[torch.Tensor]) -> float:
    same = total = 0
    for x in inputs:
        expected, actual = reference(x).argmax(1), candidate(x).argmax(1)
        same, total = same + int((expected == actual).sum()), total + expected.numel()
    return same / total


def backend_table(
    model: nn.Module,
    backends: Sequence[str],
    resolution: tuple[int, int],
    threads: int,
    rounds: int,
    warmup: int = 2,
    *,
    compare: bool = True,
    images: ImageSource | None = None,
    calibration_images: int = 32,
    agreement_images: int = 8,
    keep_float: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> list[BackendRow]:
    """The rows of one model (see the module doc). ``images``: real images to calibrate INT8 on
    and to measure agreement on (held out from calibration); None: a generated scene for the
    agreement, and no INT8."""
    model = model.cpu().float().eval()
    record = ModelRecord.for_model(model)
    preprocessing = replace(record.preprocessing, size=resolution, resize=ResizeMode.fixed)
    record = replace(record, preprocessing=preprocessing)
    name = record.architecture.name
    if any(b in INT8_BACKENDS for b in backends) and images is None:
        raise EffdetsegError("--backends int8: INT8 needs real images to calibrate on: give --calibration DIR|PRESET")
    if images is not None:
        calibration, held_out = split_images(images.count, min(calibration_images, images.count - 1), agreement_images)
        agreement_inputs = [preprocess(images.load(i), preprocessing) for i in held_out]
    else:
        calibration, agreement_inputs = [], [preprocess(generated_parity_image(), preprocessing)]

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    runners["eager"] = ModelRunner(prepare_for_inference(model, torch.device("cpu")))
    needs_graph = [b for b in backends if b != "eager"]
    graph = onnx_bytes(fold_batchnorm(model)[0], record) if needs_graph else b""
    for backend in needs_graph:
        log(f"  {name}: preparing {backend} …")
        if backend == "onnxruntime":
            runners[backend] = OnnxRunner(graph, torch.device("cpu"), threads=threads, name=name)
        elif backend == "openvino":
            runners[backend] = OpenVinoRunner(graph, threads=threads, name=name)
        elif backend == "int8":
            assert images is not None
            recipe = NncfRecipe() if keep_float is None else NncfRecipe(keep_float=keep_float)
            quantized = quantize_openvino(openvino_model(graph, record), images, calibration, preprocessing, recipe)
            runners[backend] = OpenVinoRunner(quantized, threads=threads, name=f"{name} int8")
        elif backend == "onnxruntime-int8":
            assert images is not None
            with tempfile.TemporaryDirectory(prefix="effdetseg-int8-") as work:
                fp32, int8 = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
                fp32.write_bytes(graph)
                quantize_onnx(fp32, int8, images, calibration, preprocessing)
                runners[backend] = OnnxRunner(int8, torch.device("cpu"), threads=threads)
    fpn: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    backbone = getattr(getattr(model, "config", None), "backbone", None)
    if compare and backbone:
        log(f"  {name}: preparing smp FPN ({backbone}) in eager PyTorch and OpenVINO …")
        network = smp_fpn(backbone, record.architecture.num_classes)
        fpn["smp FPN openvino"] = OpenVinoRunner(_onnx_bytes_plain(network, (2, 3, *resolution)), threads=threads, name="smp FPN")
        # smp's FPN at its best in eager PyTorch: channels-last weights and input, inference mode
        eager_fpn = network.to(memory_format=torch.channels_last)
        fpn["smp FPN eager"] = lambda x: eager_fpn(x.contiguous(memory_format=torch.channels_last))

    x = torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(0))
    everything = {**runners, **fpn}
    with torch_threads(threads), torch.inference_mode():
        timings: dict[str, Timing] = time_alternating(
            {label: (lambda run=run: run(x)) for label, run in everything.items()}, rounds=rounds, warmup=warmup
        )
        rows = []
        for backend in runners:
            median = timings[backend].median_ms
            rows.append(BackendRow(
                model=name,
                backend=backend,
                median_ms=median,
                vs_eager=median / timings["eager"].median_ms,
                vs_fpn_eager=median / timings["smp FPN eager"].median_ms if fpn else None,
                vs_fpn_openvino=median / timings["smp FPN openvino"].median_ms if fpn else None,
                agreement=1.0 if backend == "eager" else _agreement(runners["eager"], runners[backend], agreement_inputs),
            ))
        for label in sorted(fpn):
            median = timings[label].median_ms
            rows.append(BackendRow(name, label, median, median / timings["eager"].median_ms,
                                   median / timings["smp FPN eager"].median_ms, median / timings["smp FPN openvino"].median_ms, None))
    return rows


def format_backend_table(rows: Sequence[BackendRow]) -> str:
    """A markdown table: backend, ms, × eager, × FPN eager, × FPN OpenVINO, argmax agreement."""
    def ratio(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = ["| model | backend | median ms | × eager | × FPN eager | × FPN OpenVINO | argmax agreement with eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = "" if r.agreement is None else f"{100 * r.agreement:.2f} %"
        lines.append(f"| {r.model} | {r.backend} | {r.median_ms:.1f} | {ratio(r.vs_eager)} | {ratio(r.vs_fpn_eager)} | "
                     f"{ratio(r.vs_fpn_openvino)} | {agreement} |")
    return "\n".join(lines)


def agreement_inputs_note(images: ImageSource | None, agreement_images: int) -> str:
    if images is None:
        return "agreement on a generated scene"
    return f"agreement on {min(agreement_images, images.count - 1)} held-out images of {images.description}"
