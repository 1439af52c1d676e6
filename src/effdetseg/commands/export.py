"""``effdetseg export``: a checkpoint → ONNX or TorchScript (BN folded, dynamic sizes), then a parity check.

The parity check runs the written file (onnxruntime for ONNX) and the PyTorch checkpoint on a real
image, at two input sizes and batch sizes, and prints the max absolute logit difference and the
fraction of pixels whose argmax agrees. The command fails (exit 1) unless every agreement is
≥ 99.9 %; the file is left in place for inspection.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import EffdetsegError
from ..io.files import ensure_output_folder

DEFAULT_PARITY_IMAGE = Path("../shared/data/voc2012_sample/JPEGImages/2007_000033.jpg")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effdetseg export",
        description="Export a checkpoint to ONNX or TorchScript with BatchNorm folded and dynamic "
        "batch/height/width, then check the file against PyTorch on a real image.",
    )
    parser.add_argument("--checkpoint", help="effdetseg checkpoint (.pth/.pt/.safetensors) with its model config")
    parser.add_argument("--weights", help="bare state dict (the original's model.pth); needs --model and --num_classes")
    parser.add_argument("--model", help="model name, with --weights")
    parser.add_argument("--num_classes", type=int, help="number of classes, with --weights (checked against a checkpoint)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), help="default: from --output's suffix, else onnx")
    parser.add_argument("--output", help="file to write (default: the checkpoint's name with .onnx / .torchscript.pt)")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "legacy"),
        default="legacy",
        help="ONNX exporter: legacy (TorchScript-based, deprecated by PyTorch; seconds) or dynamo "
        "(torch.export-based; about a minute for D0 on 2 CPU cores); both write dynamic shapes (default: legacy)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--image", help=f"real image for the parity check (default: {DEFAULT_PARITY_IMAGE})")
    parser.add_argument(
        "--resolution",
        type=int,
        help="size the parity image is resized to, also recorded in the file for `predict` "
        "(default: the checkpoint's training size, else 512)",
    )
    return parser


def _format_from_suffix(output: str | None) -> str:
    if output is None or output.lower().endswith(".onnx"):
        return "onnx"
    if output.lower().endswith((".pt", ".pth", ".ts", ".torchscript", ".jit")):
        return "torchscript"
    raise EffdetsegError(f"{output}: cannot tell the format from the suffix; pass --format onnx|torchscript")


def _output_path(args: argparse.Namespace, source: Path, fmt: str) -> Path:
    if args.output:
        return Path(args.output)
    name = source.name.split(".")[0]
    return source.with_name(name + SUFFIXES[fmt])


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..data.image_io import read_image
    from ..deploy.export import export_metadata, export_onnx, export_torchscript, fold_batchnorm, parity_check
    from ..deploy.predictor import Predictor

    if bool(args.checkpoint) == bool(args.weights):
        raise EffdetsegError("give exactly one of --checkpoint PATH or --weights PATH (with --model and --num_classes)")
    source = Path(args.checkpoint or args.weights)
    if args.output and Path(args.output).is_dir():
        raise EffdetsegError(f"{args.output}: is a folder; --output must be a file name")
    fmt = args.format or _format_from_suffix(args.output)
    output = _output_path(args, source, fmt)
    ensure_output_folder(output.parent)
    image_path = Path(args.image) if args.image else DEFAULT_PARITY_IMAGE
    if not image_path.is_file():
        raise EffdetsegError(f"{image_path}: parity image not found; pass a real image with --image")
    image = read_image(image_path)

    predictor = Predictor(
        source,
        device="cpu",
        backend="torch",
        model_name=args.model,
        num_classes=args.num_classes,
        resolution=args.resolution,
        channels_last=False,  # trace and compare in the default layout
    )
    model, preprocessing = predictor.model, predictor.preprocessing
    print(f"model: {predictor.model_config.get('name')} ({predictor.num_classes} classes) from {source}")

    started = time.perf_counter()
    folded, report = fold_batchnorm(model)
    print(f"{report.summary()}; max |Δ| after folding {report.max_abs_diff:.2g}")
    if report.unfolded:
        print(f"left unfolded: {', '.join(report.unfolded)}")
    metadata = export_metadata(model, preprocessing, predictor.labels)
    if fmt == "onnx":
        export_onnx(folded, output, metadata, exporter=args.exporter, opset=args.opset)
    else:
        export_torchscript(folded, output, metadata)
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({fmt}, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")

    print(f"parity check against PyTorch on {image_path}:")
    results = parity_check(model, output, image, preprocessing)
    for result in results:
        print(f"  {result}")
    if not all(result.passed for result in results):
        print(f"effdetseg export: error: parity check failed; {output} does not match the checkpoint", file=sys.stderr)
        return 1
    return 0
