"""Zoo models side by side: params, GMACs, latency (median, p90), images/s and peak memory.

All models are built first and then timed in alternation, one forward pass each per round (the
order rotates every round), so a machine that gets slower or faster during the run affects every
model alike and the ratios between them hold. Every model and input uses the same memory layout,
channels-last by default (as ``effdetseg predict`` runs; ``--memory-format contiguous`` for NCHW).
The zoo models run as ``predict`` runs them, prepared by ``prepare_for_inference`` (BatchNorm
folded); ``--compare`` adds segmentation_models_pytorch's FPN, UNet and DeepLabV3+ on the matching
EfficientNet encoder (``timm-efficientnet-bN``; smp's ``tu-`` timm encoder for other backbones),
random weights, in eval mode (run as their users run them).

Memory, per model, measured in its own forward pass after warm-up:
- ``weights MiB``: parameters and buffers;
- ``peak MiB``: the extra memory a forward pass reaches above what was in use before it
  (activations and workspace). CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the
  memory allocated before. CPU: the resident-set high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` after returning freed heap memory with ``malloc_trim``) minus the
  resident set before; where that is unavailable, the growth of ``getrusage``'s ``ru_maxrss``,
  which only shows a model that raises the process's peak (a lower bound, marked ``≥``).

Exported files are timed by :mod:`effdetseg.benchmarking.exported_files`, one network in every
backend by :mod:`effdetseg.benchmarking.backend_table`.
"""
from __future__ import annotations

import ctypes
import gc
import re
import resource
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EffdetsegError
from ..inference.prepare import prepare_for_inference
from ..inference.timing import time_alternating
from ..io.record import SEGMENTATION_FAMILIES
from ..models import create_model, is_model, list_models, model_family
from ..models.complexity import count_macs, count_parameters

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMP_ARCHITECTURES = ("FPN", "Unet", "DeepLabV3Plus")


@dataclass
class Candidate:
    """A model to time: how to build it (on a device, or on meta for counting MACs), and whether
    it runs prepared for inference (the zoo's models, as predict runs them)."""

    label: str
    build: Callable[[], nn.Module]
    backbone: str | None = None
    prepare: bool = False


@dataclass
class Result:
    model: str
    params: int
    gmacs: float  # per image
    median_ms: float
    p90_ms: float
    images_per_s: float
    weights_mib: float
    peak_mib: float
    peak_is_lower_bound: bool
    relative_latency: float = 1.0  # median / the first model's median


def zoo_candidates(spec: str, num_classes: int) -> list[Candidate]:
    if spec == "all":
        names = [n for n in list_models() if model_family(n) in SEGMENTATION_FAMILIES]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    candidates = []
    for name in names:
        if not is_model(name):
            raise EffdetsegError(f"--model {name!r}: not a zoo model (see `effdetseg models`)")

        def build(name: str = name) -> nn.Module:
            return create_model(name, num_classes=num_classes)

        with torch.device("meta"):
            model = build()
        backbone = getattr(getattr(model, "config", None), "backbone", None)
        candidates.append(Candidate(name, build, backbone, prepare=True))
    if not candidates:
        raise EffdetsegError("--model: no model named")
    return candidates


def smp_candidates(backbones: list[str], num_classes: int) -> list[Candidate]:
    """smp FPN, UNet and DeepLabV3+ for each distinct backbone, with no pretrained weights."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise EffdetsegError(
            "--compare needs segmentation_models_pytorch: pip install 'effdetseg[compare]'"
        ) from None
    known = set(smp.encoders.get_encoder_names())
    candidates = []
    for backbone in dict.fromkeys(backbones):
        match = re.fullmatch(r"efficientnet_b(\d)", backbone)
        encoder = f"timm-efficientnet-b{match.group(1)}" if match else None
        if encoder not in known:
            encoder = f"tu-{backbone}"  # smp's wrapper of any timm feature extractor
        for architecture in SMP_ARCHITECTURES:

            def build(architecture: str = architecture, encoder: str = encoder) -> nn.Module:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # smp deprecates `timm-` names
                    return getattr(smp, architecture)(encoder_name=encoder, encoder_weights=None, classes=num_classes)

            candidates.append(Candidate(f"smp {architecture} ({encoder})", build, backbone))
    return candidates


def _percentile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def cpu_peak_bytes(run: Callable[[], None]) -> tuple[int, bool]:
    """Resident-memory peak of ``run()`` above the resident set before it; (bytes, is_lower_bound)."""
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS (Linux ≥ 4.0)
        before = _proc_status_kib("VmRSS")
        run()
        peak = _proc_status_kib("VmHWM")
        if before is not None and peak is not None:
            return max(0, peak - before) * 1024, False
    except OSError:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return (after - before) * unit, True


def cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def benchmark(
    candidates: list[Candidate],
    resolution: tuple[int, int],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    iters: int,
    warmup: int,
    memory_format: torch.memory_format = torch.channels_last,
) -> list[Result]:
    gmacs, params = [], []  # of the architecture (before BatchNorm folding)
    for candidate in candidates:
        with torch.device("meta"):
            meta_model = candidate.build()
        gmacs.append(count_macs(meta_model, resolution) / 1e9)
        params.append(count_parameters(meta_model))
    channels_last = memory_format == torch.channels_last
    models = [
        (prepare_for_inference(c.build(), device, channels_last=channels_last) if c.prepare else c.build().eval())
        .to(device=device, dtype=dtype, memory_format=memory_format)
        for c in candidates
    ]
    x = torch.randn(batch, 3, *resolution, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def runner(model: nn.Module) -> Callable[[], None]:
        return lambda: (model(x), synchronize())

    peaks: list[tuple[int, bool]] = []
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models:
                model(x)
        synchronize()
        for model in models:
            if device.type == "cuda":
                peaks.append((cuda_peak_bytes(lambda: model(x), device), False))
            else:
                peaks.append(cpu_peak_bytes(lambda: model(x)))
        # settle=0: every candidate runs on PyTorch's one thread pool, nothing of another runtime to wait out
        timings = time_alternating({str(i): runner(model) for i, model in enumerate(models)}, rounds=iters, warmup=0, settle=0)
    times = [[ms / 1000 for ms in timings[str(i)].samples_ms] for i in range(len(models))]
    results = []
    for candidate, model, macs, count, samples, (peak, lower_bound) in zip(candidates, models, gmacs, params, times, peaks):
        median = _percentile(samples, 0.5)
        weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        results.append(
            Result(
                model=candidate.label,
                params=count,
                gmacs=macs,
                median_ms=1000 * median,
                p90_ms=1000 * _percentile(samples, 0.9),
                images_per_s=batch / median,
                weights_mib=weight_bytes / 2**20,
                peak_mib=peak / 2**20,
                peak_is_lower_bound=lower_bound,
            )
        )
    for result in results:
        result.relative_latency = result.median_ms / results[0].median_ms
    return results


def format_table(results: list[Result]) -> str:
    header = ("model", "params (M)", "GMACs", "median ms", "p90 ms", "img/s", "× median", "weights MiB", "peak MiB")
    rows = [
        (
            r.model,
            f"{r.params / 1e6:.2f}",
            f"{r.gmacs:.2f}",
            f"{r.median_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.images_per_s:.2f}",
            f"{r.relative_latency:.2f}",
            f"{r.weights_mib:.1f}",
            ("≥" if r.peak_is_lower_bound else "") + f"{r.peak_mib:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
