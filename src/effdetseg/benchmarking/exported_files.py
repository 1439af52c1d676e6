"""Exported files timed against the eager network they came from: the eager network as ``predict``
runs it (prepared for inference) and each file run by its backend through the runner ``Predictor``
uses, alternately (:func:`~effdetseg.inference.timing.time_alternating`), every runtime on the same
number of threads. ``effdetseg benchmark --onnx`` (:func:`benchmark_onnx_files`) and the speed
check of ``effdetseg export --int8`` (:func:`eager_and_file_runners`) run this.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffdetsegError
from ..inference.backends import QUANTIZATION_KEY
from ..inference.onnx_graph import onnx_metadata
from ..inference.prepare import prepare_for_inference
from ..inference.runners import OnnxRunner, OpenVinoRunner, export_record
from ..inference.segment import ModelRunner
from ..inference.timing import Timing, time_alternating, torch_threads


def eager_and_file_runners(
    model: nn.Module, files: Mapping[str, tuple[str, str | Path]], images: torch.Tensor, threads: int
) -> dict[str, Callable[[], Any]]:
    """Runners for :func:`time_alternating`: ``model`` (prepared for inference, see
    :func:`~effdetseg.inference.prepare.prepare_for_inference`) as ``eager fp32``, then each exported
    file under its name, run by its backend (``onnxruntime`` or ``openvino``) on ``threads``
    threads, all on the same input batch, each through the runner ``Predictor`` uses."""
    run = ModelRunner(model.cpu().float().eval())  # as predict runs it, memory-format conversion included

    def eager() -> None:
        with torch.inference_mode():
            run(images)

    runners: dict[str, Callable[[], Any]] = {"eager fp32": eager}
    for name, (backend, path) in files.items():
        runner = OpenVinoRunner(path, threads=threads) if backend == "openvino" else OnnxRunner(path, torch.device("cpu"), threads)
        runners[name] = lambda runner=runner: runner(images)
    return runners


def eager_and_onnx_runners(model: nn.Module, onnx_files: Mapping[str, str | Path], images: torch.Tensor, threads: int) -> dict[str, Callable[[], Any]]:
    """:func:`eager_and_file_runners` for ONNX files, all run by ONNX Runtime."""
    return eager_and_file_runners(model, {name: ("onnxruntime", path) for name, path in onnx_files.items()}, images, threads)


def benchmark_onnx_files(files: Sequence[str | Path], resolution: tuple[int, int], threads: int, rounds: int, warmup: int) -> dict[str, Timing]:
    """Time ONNX files against the eager fp32 network they were exported from — rebuilt from the
    first file's model record with random weights (the speed does not depend on them) and
    prepared as ``predict`` runs it — alternately, on ``threads`` threads each."""
    metadata = {Path(path): onnx_metadata(path) for path in files}
    first = Path(files[0])
    record = export_record(metadata[first], first)
    if record is None:
        raise EffdetsegError(f"{first}: no effdetseg model record in its metadata (export it with `effdetseg export`)")
    model = prepare_for_inference(record.architecture.build(first), torch.device("cpu"))
    names = {f"onnxruntime {'int8' if QUANTIZATION_KEY in meta else 'fp32'} {path.name}": path for path, meta in metadata.items()}
    images = torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(0))
    runners = eager_and_onnx_runners(model, names, images, threads)
    with torch_threads(threads), torch.inference_mode():
        return time_alternating(runners, rounds=rounds, warmup=warmup)
