"""``effdetseg benchmark``: params, GMACs, latency (median, p90), images/s and peak memory of zoo
models; with ``--onnx``, exported ONNX files (fp32 or INT8) against the eager network they came from
(see :mod:`effdetseg.benchmarking.model_table` and :mod:`effdetseg.benchmarking.exported_files` for how each is measured); with ``--backends``, one table per
model of the same network in eager PyTorch, ONNX Runtime, OpenVINO and INT8 against smp's FPN on the
same encoder (:mod:`effdetseg.benchmarking.backend_table`)."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import EffdetsegError
from ..io.record import parse_size
from .args import ArgumentParser, add_device, positive

DTYPES = ("fp32", "bf16", "fp16")


def build_parser() -> ArgumentParser:
    from ..export.quantize_openvino import DEFAULT_KEEP_FLOAT  # OpenVINO and NNCF are imported when used

    parser = ArgumentParser(
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
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=1, help="images per forward pass (default: 1)")
    add_device(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights and input dtype (default: fp32)")
    parser.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=21, help="output classes (default: 21)")
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
    parser.add_argument(
        "--onnx",
        action="append",
        metavar="FILE",
        help="time exported ONNX files (fp32 or INT8; repeat for several) in onnxruntime against the eager fp32 "
        "model they came from, alternately, on --threads threads (default 2); replaces the zoo table",
    )
    table = parser.add_argument_group("--backends: one table of backends per model")
    table.add_argument(
        "--backends", "--backend", dest="backends",
        help="comma list of eager, onnxruntime, openvino, int8 (OpenVINO INT8 by NNCF), onnxruntime-int8: per model "
        "the median ms, × eager, × smp FPN (same encoder) in eager and in OpenVINO (with --compare), argmax agreement "
        "with eager; --threads threads each (default 2)",
    )
    table.add_argument("--checkpoint", help="--backends: time (and compare) this checkpoint's network instead of a random-weight --model")
    table.add_argument("--calibration", help="--backends: real images (a folder or a data preset) to calibrate INT8 on and to measure agreement on")
    table.add_argument("--data-root", help="--backends: data.root of the --calibration preset")
    table.add_argument("--calibration-images", type=int, default=32, help="--backends int8: calibration images (default: 32)")
    table.add_argument(
        "--keep-float", help=f"--backends int8: layers NNCF keeps in fp32 (as export --keep-float; default: {','.join(DEFAULT_KEEP_FLOAT)})",
    )
    table.add_argument("--agreement-images", type=int, default=8, help="--backends: held-out images for the agreement (default: 8)")
    return parser


def benchmark_backends(args: argparse.Namespace, resolution: tuple[int, int]) -> int:
    """``--backends``: per model, one table of backends (see :mod:`effdetseg.benchmarking.backend_table`)."""
    from ..benchmarking.backend_table import agreement_inputs_note, backend_table, format_backend_table, parse_backends
    from ..export.quantize_openvino import NncfRecipe, parse_keep_float
    from ..inference.timing import cpu_name

    backends = parse_backends(args.backends)
    if args.keep_float:
        NncfRecipe(keep_float=parse_keep_float(args.keep_float))  # an unknown group is one line, before any work
    threads = args.threads or 2
    for name, value in (("--calibration-images", args.calibration_images), ("--agreement-images", args.agreement_images), ("--threads", threads)):
        if value < 1:
            raise EffdetsegError(f"{name} must be at least 1, got {value}")
    if args.device not in ("auto", "cpu"):
        raise EffdetsegError("--backends times CPU runtimes; use --device cpu")
    if args.compare and any(side % 32 for side in resolution):
        raise EffdetsegError(f"--compare: smp models need sizes divisible by 32, got {resolution[0]}×{resolution[1]}")
    if any(b in backends for b in ("openvino", "int8")) or args.compare:
        from ..inference.backends import require_openvino

        require_openvino()
    images = None
    if args.calibration:
        from ..export.calibration import open_image_source

        images = open_image_source(args.calibration, args.data_root)
        for skipped in images.skipped:
            print(f"--calibration: skipped {skipped}")
    models = _table_models(args)
    print(
        f"benchmark: backends {', '.join(backends)} of {len(models)} model(s){' against smp FPN' if args.compare else ''}, "
        f"1×3×{resolution[0]}×{resolution[1]} fp32, {threads} threads each ({cpu_name()}), "
        f"{args.warmup} warm-up + {args.iters} timed passes, run alternately; {agreement_inputs_note(images, args.agreement_images)}"
    )
    all_rows = []
    for model in models:
        rows = backend_table(
            model, backends, resolution, threads, args.iters, args.warmup, compare=args.compare, images=images,
            calibration_images=args.calibration_images, agreement_images=args.agreement_images,
            keep_float=parse_keep_float(args.keep_float) if args.keep_float else None,
        )
        print(format_backend_table(rows))
        all_rows += rows
    if args.json:
        write_json(Path(args.json), {"resolution": list(resolution), "threads": threads, "cpu": cpu_name(), "iters": args.iters,
                                     "backends": list(backends), "rows": [asdict(r) for r in all_rows]})
    return 0


def _table_models(args: argparse.Namespace) -> list:
    """The networks of --backends: the checkpoint's, or each --model with random weights (seed 0)."""
    import torch

    from ..benchmarking.model_table import zoo_candidates

    if args.checkpoint:
        from ..inference.predictor import check_segmentation
        from ..io.build import model_from_file
        from ..io.model_files import read_model_file

        file = read_model_file(args.checkpoint)
        if file.record is None:
            raise EffdetsegError(f"{args.checkpoint}: a bare state dict has no record; --backends needs an effdetseg checkpoint")
        check_segmentation(file.record, args.checkpoint)
        return [model_from_file(file)]
    torch.manual_seed(0)
    return [candidate.build() for candidate in zoo_candidates(args.model, args.num_classes)]


def benchmark_onnx(args: argparse.Namespace, resolution: tuple[int, int]) -> int:
    """``--onnx``: the files in onnxruntime against eager PyTorch fp32, alternately, one table."""
    from ..benchmarking.exported_files import benchmark_onnx_files
    from ..inference.timing import cpu_name, timing_table

    threads = args.threads or 2
    print(
        f"benchmark: {len(args.onnx)} ONNX file(s) against eager PyTorch fp32 (prepared as predict runs it), "
        f"1×3×{resolution[0]}×{resolution[1]}, {threads} threads ({cpu_name()}), "
        f"{args.warmup} warm-up + {args.iters} timed passes each, run alternately"
    )
    timings = benchmark_onnx_files(args.onnx, resolution, threads, args.iters, args.warmup)
    print(timing_table(timings))
    if args.json:
        info = {"resolution": list(resolution), "threads": threads, "cpu": cpu_name(), "iters": args.iters,
                "median_ms": {name: timing.median_ms for name, timing in timings.items()}}
        write_json(Path(args.json), info)
    return 0


def write_json(path: Path, info: dict) -> None:
    from ..io.files import write_text_atomic

    check_json(path)
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    print(f"wrote {path}")


def check_json(path: Path) -> None:
    """--json: refused before any timing when it names a folder, a checkpoint or a training run's file."""
    from ..io.files import check_output_folder, check_replaceable

    if path.is_dir():
        raise EffdetsegError(f"{path}: --json is a folder; give a file name")
    check_replaceable(path, "--json")
    check_output_folder(path.parent)


def parse_resolution(text: str) -> tuple[int, int]:
    """``--resolution``: a size (see :func:`effdetseg.io.record.parse_size`) of positive sides."""
    try:
        height, width = parse_size(text)
    except ValueError:
        raise EffdetsegError(f"--resolution {text!r}: expected a size such as 512 or 384x512") from None
    if height <= 0 or width <= 0:
        raise EffdetsegError(f"--resolution {text!r}: sizes must be positive")
    return height, width


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from ..benchmarking.model_table import DTYPES as TORCH_DTYPES
    from ..benchmarking.model_table import benchmark, format_table, smp_candidates, zoo_candidates
    from ..devices import resolve_device
    from ..inference.timing import cpu_name

    resolution = parse_resolution(args.resolution)
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise EffdetsegError("--batch and --iters must be at least 1, --warmup at least 0")
    positive("--threads", args.threads)
    positive("--num-classes", args.num_classes)
    if args.json:
        check_json(Path(args.json))
    if args.onnx and args.backends:
        raise EffdetsegError("give --onnx FILE or --backends LIST, not both")
    if args.onnx:
        return benchmark_onnx(args, resolution)
    if args.backends:
        return benchmark_backends(args, resolution)
    if args.checkpoint or args.calibration:
        raise EffdetsegError("--checkpoint and --calibration are for --backends")
    device = resolve_device(args.device)
    dtype = TORCH_DTYPES[args.dtype]
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

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
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
        write_json(Path(args.json), {
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
        })
    return 0
