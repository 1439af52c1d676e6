"""``effdetseg export``: a checkpoint → ONNX or TorchScript (BN folded, dynamic sizes), then a parity check.

The parity check runs the written file (onnxruntime for ONNX) and the PyTorch checkpoint through
the same inference path, on ``--image`` or else on a generated scene (no file needed), at two input
sizes and batch sizes, and prints the max absolute logit difference and the fraction of pixels
whose argmax agrees. The command fails (exit 1) unless every agreement is ≥ 99.9 %; the file is
left in place for inspection.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from ..errors import EffdetsegError
from .args import ArgumentParser, add_device, add_model_source

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="effdetseg export",
        description="Export a checkpoint to ONNX or TorchScript with BatchNorm folded and dynamic "
        "batch/height/width, then check the file against PyTorch.",
    )
    add_model_source(parser, exported=False)
    parser.add_argument("--format", choices=("onnx", "torchscript"), help="default: from --output's suffix, else onnx")
    parser.add_argument("--output", "--output_name", help="file to write (default: the checkpoint's name with .onnx / .torchscript.pt)")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "legacy"),
        default="legacy",
        help="ONNX exporter: legacy (TorchScript-based, deprecated by PyTorch; seconds) or dynamo "
        "(torch.export-based; about a minute for D0 on 2 CPU cores); both write dynamic shapes (default: legacy)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--image", help="image for the parity check (default: a generated scene, no file needed)")
    parser.add_argument(
        "--resolution",
        type=int,
        help="network input size N×N recorded in the file for `predict` and used by the parity check "
        "(default: the checkpoint's preprocessing; 0 = original size)",
    )
    add_device(parser, "where the parity check runs the exported file and PyTorch (the export itself traces on the CPU)")
    return parser


def _format_from_suffix(output: str | None) -> str:
    if output is None or output.lower().endswith(".onnx"):
        return "onnx"
    if output.lower().endswith((".pt", ".pth", ".ts", ".torchscript", ".jit")):
        return "torchscript"
    raise EffdetsegError(f"{output}: cannot tell the format from the suffix; pass --format onnx|torchscript")


def _output_path(output: str | None, source: Path, fmt: str) -> Path:
    if output:
        return Path(output)
    return source.with_name(source.name.split(".")[0] + SUFFIXES[fmt])


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..data.image_io import read_image
    from ..deploy.export import export_onnx, export_torchscript, generated_parity_image, parity_check
    from ..deploy.predictor import Predictor, check_segmentation
    from ..deploy.prepare import fold_batchnorm
    from ..devices import resolve_device
    from ..io.files import ensure_output_folder
    from ..io.record import ModelRecord, build_model, read_model_file

    if bool(args.checkpoint) == bool(args.weights):
        raise EffdetsegError("give exactly one of --checkpoint PATH or --weights PATH (with --model and --num-classes)")
    if args.weights and not args.model:
        raise EffdetsegError("--weights needs --model NAME (e.g. efficientdet_d4_seg)")
    source = Path(args.checkpoint or args.weights)
    if args.output and Path(args.output).is_dir():
        raise EffdetsegError(f"{args.output}: is a folder; --output must be a file name")
    fmt = args.format or _format_from_suffix(args.output)
    output = _output_path(args.output, source, fmt)
    if output.resolve() == source.resolve():
        raise EffdetsegError(f"{output}: --output would overwrite the checkpoint")
    ensure_output_folder(output.parent)
    device = resolve_device(args.device)
    if args.image:
        images, image_name = [read_image(args.image)], args.image
    else:
        images, image_name = [generated_parity_image()], "a generated scene"

    file = read_model_file(source)
    model = build_model(file, model_name=args.model, num_classes=args.num_classes)
    record = file.record or ModelRecord.for_model(model)
    check_segmentation(record, source)
    record = replace(record, preprocessing=record.preprocessing.with_resolution(args.resolution))
    print(f"model: {record.architecture.name} ({record.architecture.num_classes} classes) from {source}")

    started = time.perf_counter()
    folded, report = fold_batchnorm(model)
    print(f"{report.summary()}; max |Δ| after folding {report.max_abs_diff:.2g}")
    if report.unfolded:
        print(f"left unfolded: {', '.join(report.unfolded)}")
    if fmt == "onnx":
        export_onnx(folded, output, record, exporter=args.exporter, opset=args.opset)
    else:
        export_torchscript(folded, output, record)
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({fmt}, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")

    print(f"parity check against PyTorch on {image_name} ({record.preprocessing.describe()}):")
    exported = Predictor(output, device=device)
    results = parity_check(model, exported, images, record.preprocessing)
    for result in results:
        print(f"  {result}")
    if not all(result.passed for result in results):
        print(f"effdetseg export: error: parity check failed; {output} does not match the checkpoint", file=sys.stderr)
        return 1
    return 0
