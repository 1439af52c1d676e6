"""Eager PyTorch against ONNX Runtime files: alternating latency, and label agreement on real images.

Latency: every runner is called in turn, one pass each per round, the order rotating every round,
so a machine that slows down or speeds up (a shared one) affects all alike and their ratios hold.
PyTorch and ONNX Runtime get the same number of threads. Agreement: two predictors label the same
real images through :meth:`Predictor.predict` (their own preprocessing, logits resized to the
original size, argmax); the fraction of pixels with the same label, pooled over all images.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

from .predictor import Predictor


def ort_session(path: str | Path, threads: int) -> Any:
    """An onnxruntime CPU session running on ``threads`` threads (all graph optimizations on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about the optimized graph are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextmanager
def torch_threads(threads: int):
    """Run PyTorch on ``threads`` CPU threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Timing:
    name: str
    median_ms: float
    samples_ms: tuple[float, ...]

    def speedup_over(self, reference: Timing) -> float:
        """Throughput of this runner relative to ``reference`` (> 1: faster)."""
        return reference.median_ms / self.median_ms


def time_alternating(
    runners: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter
) -> dict[str, Timing]:
    """Median time of each runner over ``rounds`` passes, all runners alternating.

    ``clock``: wall time by default; ``time.process_time`` counts this process's CPU time only,
    which on a machine shared with other work is the steadier measure of one thread's latency.
    """
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            runners[name]()
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = clock()
            runners[name]()
            samples[name].append(1000 * (clock() - started))
    return {name: Timing(name, median(values), tuple(values)) for name, values in samples.items()}


def eager_and_onnx_runners(model: torch.nn.Module, onnx_files: Mapping[str, str | Path], images: torch.Tensor, threads: int) -> dict[str, Callable[[], Any]]:
    """Runners for ``time_alternating``: ``model`` eager (channels-last, inference mode) as
    ``eager fp32``, then each ONNX file under its name, all on the same input batch."""
    model = model.cpu().float().eval().to(memory_format=torch.channels_last)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    array = images.numpy()

    def eager() -> None:
        with torch.inference_mode():
            model(channels_last)

    runners: dict[str, Callable[[], Any]] = {"eager fp32": eager}
    for name, path in onnx_files.items():
        session = ort_session(path, threads)
        feed = {session.get_inputs()[0].name: array}
        runners[name] = lambda session=session, feed=feed: session.run(None, feed)
    return runners


def timing_table(timings: Mapping[str, Timing], reference: str = "eager fp32") -> str:
    """``name  median ms  × eager`` lines."""
    width = max(len(name) for name in timings)
    lines = [f"  {'runner'.ljust(width)}  median ms  throughput × {reference}"]
    for name, timing in timings.items():
        lines.append(f"  {name.ljust(width)}  {timing.median_ms:9.1f}  {timing.speedup_over(timings[reference]):.2f}")
    return "\n".join(lines)


@dataclass
class Agreement:
    """Pixels labelled alike by two models, accumulated image by image."""

    images: int = 0
    pixels: int = 0
    agreeing: int = 0
    worst_image: float = 1.0  # the lowest agreement of one image

    def add(self, expected: np.ndarray, actual: np.ndarray) -> None:
        same = int((expected == actual).sum())
        self.images, self.pixels, self.agreeing = self.images + 1, self.pixels + expected.size, self.agreeing + same
        self.worst_image = min(self.worst_image, same / expected.size)

    @property
    def fraction(self) -> float:
        return self.agreeing / self.pixels if self.pixels else 0.0


def label_agreement(reference: Predictor, candidate: Predictor, images: Iterable[np.ndarray]) -> Agreement:
    """Pixels labelled alike by ``reference`` and ``candidate``, over all ``images``."""
    agreement = Agreement()
    for image in images:
        agreement.add(reference.predict(image), candidate.predict(image))
    return agreement


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The effdetseg metadata of an exported ONNX file (empty for files of other tools)."""
    import onnx

    from .errors import EffdetsegError
    from .quantize import read_metadata

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EffdetsegError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
    return read_metadata(model) or {}


def benchmark_onnx_files(files: Sequence[str | Path], resolution: tuple[int, int], threads: int, rounds: int, warmup: int) -> dict[str, Timing]:
    """Time ONNX files against the eager fp32 network they were exported from (its architecture
    from the first file's metadata, random weights: the speed does not depend on them), alternately."""
    from .errors import EffdetsegError
    from .models import create_model

    config = onnx_metadata(files[0]).get("model_config")
    if not config:
        raise EffdetsegError(f"{files[0]}: no effdetseg model config in its metadata (export it with `effdetseg export`)")
    model = create_model(**{**config, "backbone_pretrained": False})
    names = {}
    for path in files:
        quantization = onnx_metadata(path).get("quantization")
        names[f"onnxruntime {'int8' if quantization else 'fp32'} {Path(path).name}"] = path
    images = torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(0))
    runners = eager_and_onnx_runners(model, names, images, threads)
    with torch_threads(threads), torch.inference_mode():
        return time_alternating(runners, rounds=rounds, warmup=warmup)
