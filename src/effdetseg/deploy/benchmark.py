"""``effdetseg benchmark``: params, GMACs, latency (median, p90), images/s and peak memory of zoo models.

All models are built first and then timed in alternation, one forward pass each per round (the
order rotates every round), so a machine that gets slower or faster during the run affects every
model alike and the ratios between them hold. Every model and input uses the same memory layout,
channels-last by default (as ``effdetseg predict`` runs; ``--memory-format contiguous`` for NCHW). ``--compare`` adds segmentation_models_pytorch's FPN,
UNet and DeepLabV3+ on the matching EfficientNet encoder (``timm-efficientnet-bN``; smp's ``tu-``
timm encoder for other backbones), random weights.

Memory, per model, measured in its own forward pass after warm-up:
- ``weights MiB``: parameters and buffers;
- ``peak MiB``: the extra memory a forward pass reaches above what was in use before it
  (activations and workspace). CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the
  memory allocated before. CPU: the resident-set high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` after returning freed heap memory with ``malloc_trim``) minus the
  resident set before; where that is unavailable, the growth of ``getrusage``'s ``ru_maxrss``,
  which only shows a model that raises the process's peak (a lower bound, marked ``≥``).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import re
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import EffdetsegError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMP_ARCHITECTURES = ("FPN", "Unet", "DeepLabV3Plus")
SEGMENTATION_FAMILIES = ("efficientdet_seg", "efficientdet_seg_p2", "unet")


@dataclass
class Candidate:
    """A model to time: how to build it (on a device, or on meta for counting MACs)."""

    label: str
    build: Callable[[], nn.Module]
    backbone: str | None = None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effdetseg benchmark",
        description="Params, GMACs, latency (median and p90 after warm-up), images/s and peak memory; "
        "models run alternately in one process.",
    )
    parser.add_argument(
        "--model",
        default="efficientdet_d0_seg",
        help="a zoo model, a comma-separated list, or 'all' (every segmentation model) (default: efficientdet_d0_seg)",
    )
    parser.add_argument("--resolution", default="512", help="input size: 512 or HEIGHTxWIDTH (default: 512)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and input dtype (default: fp32)")
    parser.add_argument("--num_classes", type=int, default=21, help="output classes (default: 21)")
    parser.add_argument("--iters", type=int, default=20, help="timed forward passes per model (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes per model first (default: 3)")
    parser.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory layout of every model and input (default: channels_last, what `predict` uses)",
    )
    parser.add_argument("--compare", action="store_true", help="add smp FPN, UNet and DeepLabV3+ on the matching encoder")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser


def parse_resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:[x×](\d+))?", text.strip())
    if not match:
        raise EffdetsegError(f"--resolution {text!r}: expected a size such as 512 or 384x512")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height <= 0 or width <= 0:
        raise EffdetsegError(f"--resolution {text!r}: sizes must be positive")
    return height, width


def zoo_candidates(spec: str, num_classes: int) -> list[Candidate]:
    from ..models import create_model, is_model, list_models, model_family

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
        candidates.append(Candidate(name, build, backbone))
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
    from .complexity import count_macs, count_parameters

    gmacs = []
    for candidate in candidates:
        with torch.device("meta"):
            meta_model = candidate.build()
        gmacs.append(count_macs(meta_model, resolution) / 1e9)
    models = [candidate.build().to(device=device, dtype=dtype, memory_format=memory_format).eval() for candidate in candidates]
    x = torch.randn(batch, 3, *resolution, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[list[float]] = [[] for _ in models]
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
        for round_index in range(iters):
            shift = round_index % len(models)
            for i in list(range(shift, len(models))) + list(range(shift)):
                synchronize()
                started = time.perf_counter()
                models[i](x)
                synchronize()
                times[i].append(time.perf_counter() - started)
    results = []
    for candidate, model, macs, samples, (peak, lower_bound) in zip(candidates, models, gmacs, times, peaks):
        median = _percentile(samples, 0.5)
        weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        results.append(
            Result(
                model=candidate.label,
                params=count_parameters(model),
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .predictor import pick_device

    resolution = parse_resolution(args.resolution)
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise EffdetsegError("--batch and --iters must be at least 1, --warmup at least 0")
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = zoo_candidates(args.model, args.num_classes)
    if args.compare:
        if any(side % 32 for side in resolution):
            raise EffdetsegError(f"--compare: smp models need sizes divisible by 32, got {resolution[0]}×{resolution[1]}")
        backbones = [c.backbone for c in candidates if c.backbone]
        if not backbones:
            raise EffdetsegError("--compare: no model with a timm backbone to match (UNet has none)")
        candidates += smp_candidates(backbones, args.num_classes)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(
        f"benchmark: {len(candidates)} model(s), batch {args.batch} × {resolution[0]}×{resolution[1]}, {args.dtype}, "
        f"{args.memory_format}, "
        f"{device.type} ({device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads), "
        f"{args.warmup} warm-up + {args.iters} timed passes each, run alternately"
    )
    memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    results = benchmark(candidates, resolution, args.batch, device, dtype, args.iters, args.warmup, memory_format)
    print(format_table(results))
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            info = {
                "resolution": list(resolution),
                "batch": args.batch,
                "dtype": args.dtype,
                "memory_format": args.memory_format,
                "device": device.type,
                "device_name": device_name,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "iters": args.iters,
                "warmup": args.warmup,
                "results": [asdict(r) for r in results],
            }
            path.write_text(json.dumps(info, indent=2) + "\n")
        except OSError as e:
            raise EffdetsegError(f"{path}: cannot write results ({e.strerror})") from None
        print(f"wrote {path}")
    return 0
