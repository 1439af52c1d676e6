"""``effdetseg export``: a checkpoint → ONNX, TorchScript or an OpenVINO IR folder (BN folded, dynamic
sizes), then a parity check; or (``--format hub``) → a model folder in the Hugging Face Hub layout with a
model card (:mod:`effdetseg.sharing.hub`).

The parity check runs the written file (onnxruntime for ONNX, OpenVINO for an IR folder) and the
PyTorch checkpoint through the same inference path, on ``--image`` or else on a generated scene (no file needed), at two input
sizes and batch sizes, and prints the max absolute logit difference and the fraction of pixels
whose argmax agrees. The command fails (exit 1) unless every agreement is ≥ 99.9 %; the file is
left in place for inspection.

``--int8``: the fp32 file goes beside the output (``NAME.fp32.onnx``; for OpenVINO the folder
``DIR.fp32/``) and is checked as above; ``--output`` becomes its INT8 version, calibrated on
``--calibration-images`` real images (a folder, or a data preset's train split; see
:mod:`effdetseg.export.quantize_onnx`): ONNX Runtime's static QDQ quantization for ONNX, NNCF's
post-training quantization for OpenVINO (:mod:`effdetseg.export.quantize_openvino`: the sensitive
layers kept in fp32, ``--keep-float``, or NNCF's accuracy control, ``--accuracy-control``). Then,
on images of the same source that were not calibrated on, the INT8 file's label maps are compared
with the checkpoint's through the Predictor, and the INT8 file, the fp32 file and the checkpoint
as ``predict`` runs it are timed alternately at the export size. Exit 1 when the agreement is
below ``--min-agreement``. Bad ``--int8`` options or calibration sources stop before anything is written.

An output never replaces a checkpoint (model weights) or a file of a training run's folder
(``last.pth``, ``config.yaml``, ``metrics.jsonl`` …): one line names it, before any work; an
earlier export at the same path is replaced.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import EffdetsegError
from .args import ArgumentParser, add_device, add_model_source, positive

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "openvino": "-openvino"}
DEFAULT_CALIBRATION_IMAGES = 48
DEFAULT_CHECK_IMAGES = 16
DEFAULT_MIN_AGREEMENT = 98.0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="effdetseg export",
        description="Export a checkpoint to ONNX, TorchScript or OpenVINO IR with BatchNorm folded and dynamic "
        "batch/height/width, then check the file against PyTorch.",
    )
    add_model_source(parser, exported=False)
    parser.add_argument(
        "--format", choices=("onnx", "torchscript", "openvino", "hub"),
        help="default: from --output's suffix, else onnx; openvino: an OpenVINO IR folder (model.xml, model.bin; "
        "pip install 'effdetseg[openvino]'); hub: a model folder (config.json, model.safetensors, README.md model card)",
    )
    parser.add_argument(
        "--output", "--output_name",
        help="file to write (default: the checkpoint's name with .onnx / .torchscript.pt); the folder with "
        "--format openvino (default: NAME-openvino/) or hub (default: NAME-hub/)",
    )
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
    hub = parser.add_argument_group("--format hub (a model folder in the Hugging Face Hub layout)")
    hub.add_argument("--license", default="other", help="the model card's licence field, a Hub licence id such as apache-2.0 (default: other)")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub model repo (owner/name; needs a token)")
    _add_int8_arguments(parser)
    return parser


def _add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    from ..export.quantize_onnx import CALIBRATION_METHODS

    from ..export.quantize_openvino import DEFAULT_KEEP_FLOAT, SENSITIVE_LAYERS

    group = parser.add_argument_group("INT8 (ONNX Runtime static quantization; NNCF for --format openvino)")
    group.add_argument(
        "--int8", action="store_true",
        help="write --output as an INT8 model (the fp32 one as NAME.fp32.onnx, or the folder DIR.fp32/ for openvino)",
    )
    group.add_argument("--calibration", help="a folder of real images, or a data preset (camvid, voc, …) whose train split is used")
    group.add_argument("--data-root", help="data.root of the --calibration preset (default: the experiment's config.yaml beside the checkpoint)")
    group.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
        help=f"images to calibrate on, spread over the source (default: {DEFAULT_CALIBRATION_IMAGES})",
    )
    group.add_argument(
        "--calibration-method", choices=CALIBRATION_METHODS, default="minmax", help="ONNX: activation ranges from (default: minmax)",
    )
    group.add_argument(
        "--keep-float", default=",".join(DEFAULT_KEEP_FLOAT),
        help=f"openvino: layers kept in fp32, a comma list of {', '.join(SENSITIVE_LAYERS)}, or 'none' "
        f"(default: {','.join(DEFAULT_KEEP_FLOAT)})",
    )
    group.add_argument(
        "--accuracy-control", action="store_true",
        help="openvino: NNCF's accuracy-aware quantization: layers return to fp32 until the held-out argmax "
        "agreement with fp32 drops by at most --max-drop points",
    )
    group.add_argument("--max-drop", type=float, default=2.0, help="openvino --accuracy-control: agreement points (default: 2)")
    group.add_argument(
        "--check-images", type=int, default=DEFAULT_CHECK_IMAGES,
        help=f"held-out images of the source for the agreement check (default: {DEFAULT_CHECK_IMAGES})",
    )
    group.add_argument(
        "--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
        help=f"exit 1 below this %% of pixels labelled as the checkpoint does (default: {DEFAULT_MIN_AGREEMENT:g})",
    )
    group.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes for the speed-up (default: 2)")
    group.add_argument("--timing-rounds", type=int, default=10, help="alternating timed passes (default: 10; 0: no timing)")


@dataclass
class Int8Plan:
    """The checked --int8 options and the opened calibration source, before any export work."""

    output: Path  # the INT8 file
    source: Any  # export.calibration.ImageSource
    calibration: list[int]
    held_out: list[int]

    fmt: str = "onnx"
    recipe: Any = None  # export.quantize_openvino.NncfRecipe for openvino

    @property
    def fp32_path(self) -> Path:
        return fp32_path(self.output, self.fmt)


def fp32_path(output: Path, fmt: str) -> Path:
    """Where ``--int8`` writes the fp32 model beside the INT8 one."""
    if fmt == "openvino":
        return output.with_name(f"{output.name}.fp32")
    return output.with_name(f"{output.stem}.fp32{output.suffix}")


def check_outputs(output: Path, fmt: str, int8: bool) -> None:
    """Refuse, before any work, outputs that would replace a checkpoint or a training run's file."""
    from ..inference.backends import OPENVINO_BIN, OPENVINO_XML
    from ..io.files import check_replaceable

    for path in [output, fp32_path(output, fmt)] if int8 else [output]:
        check_replaceable(path)
        if fmt == "openvino":
            for name in (OPENVINO_XML, OPENVINO_BIN):
                check_replaceable(path / name)


def _int8_plan(args: argparse.Namespace, fmt: str, checkpoint: Path, output: Path) -> Int8Plan | None:
    """None without --int8; else the plan, or one error line for a bad option or source."""
    if not args.int8:
        if args.calibration:
            raise EffdetsegError("--calibration is for --int8 exports")
        return None
    if fmt not in ("onnx", "openvino"):
        raise EffdetsegError("--int8 writes ONNX or OpenVINO; give --format onnx|openvino")
    if not args.calibration:
        raise EffdetsegError("--int8 needs --calibration: a folder of real images or a data preset such as camvid")
    positive("--check-images", args.check_images)
    positive("--threads", args.threads)
    positive("--timing-rounds", args.timing_rounds, 0)
    from ..export.calibration import open_image_source, split_images

    recipe = None
    if fmt == "openvino":
        from ..export.quantize_openvino import NncfRecipe, parse_keep_float, require_nncf

        require_nncf()
        recipe = NncfRecipe(keep_float=parse_keep_float(args.keep_float), accuracy_control=args.accuracy_control,
                            max_drop=args.max_drop / 100)
    source = open_image_source(args.calibration, args.data_root, experiment_config=checkpoint.parent / "config.yaml")
    for skipped in source.skipped:
        print(f"--calibration: skipped {skipped}")
    calibration, held_out = split_images(source.count, args.calibration_images, args.check_images)
    return Int8Plan(output, source, calibration, held_out, fmt, recipe)


def _quantize(plan: Int8Plan, args: argparse.Namespace, checkpoint: Path) -> int:
    """Quantize the checked fp32 file into the INT8 one, then print the agreement with the
    checkpoint and the speed-up over it."""
    from ..export.calibration import label_agreement
    from ..export.quantize_onnx import QuantizationRecipe, quantize_onnx
    from ..inference.predictor import Predictor

    reference = Predictor(checkpoint, device="cpu", model_name=args.model, num_classes=args.num_classes, resolution=args.resolution)
    recipe = plan.recipe if plan.fmt == "openvino" else QuantizationRecipe(method=args.calibration_method)
    print(f"calibrating on {len(plan.calibration)} images of {plan.source.description} ({recipe.describe()}) …")
    started = time.perf_counter()
    if plan.fmt == "openvino":
        from ..export.formats import save_openvino
        from ..export.quantize_openvino import quantize_openvino
        from ..inference.backends import OPENVINO_XML, require_openvino

        fp32 = require_openvino().Core().read_model(str(plan.fp32_path / OPENVINO_XML))
        quantized = quantize_openvino(fp32, plan.source, plan.calibration, reference.preprocessing, recipe, validation=plan.held_out)
        written = save_openvino(quantized, plan.output)
        size_mb = sum(p.stat().st_size for p in plan.output.iterdir() if p.is_file()) / 2**20
        print(f"wrote {plan.output} (OpenVINO INT8 IR, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")
        backend, files = "openvino", {"openvino fp32": plan.fp32_path, "openvino int8": written.parent}
    else:
        quantize_onnx(plan.fp32_path, plan.output, plan.source, plan.calibration, reference.preprocessing, recipe)
        size_mb = plan.output.stat().st_size / 2**20
        print(f"wrote {plan.output} (INT8 QDQ, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")
        backend, files = "onnxruntime", {"onnxruntime fp32": plan.fp32_path, "onnxruntime int8": plan.output}

    held_out = [plan.source.load(i) for i in plan.held_out]
    agreement = label_agreement(reference, Predictor(plan.output, device="cpu"), held_out)
    print(
        f"argmax agreement with the checkpoint on {agreement.images} held-out images: "
        f"{100 * agreement.fraction:.2f} % of pixels (lowest image {100 * agreement.worst_image:.2f} %)"
    )

    if args.timing_rounds:
        _time_int8(args, reference, held_out[0], backend, files)
    if 100 * agreement.fraction < args.min_agreement:
        print(
            f"effdetseg export: error: INT8 agreement {100 * agreement.fraction:.2f} % is below --min-agreement {args.min_agreement:g} %",
            file=sys.stderr,
        )
        return 1
    return 0


def _time_int8(args: argparse.Namespace, reference: Any, image: Any, backend: str, files: dict[str, Path]) -> None:
    """The INT8 file, the fp32 file and the checkpoint as predict runs it, timed alternately."""
    import torch

    from ..benchmarking.exported_files import eager_and_file_runners
    from ..inference.segment import preprocess
    from ..inference.timing import time_alternating, timing_table, torch_threads

    x = preprocess(image, reference.preprocessing)
    runners = eager_and_file_runners(reference.model, {name: (backend, path) for name, path in files.items()}, x, args.threads)
    with torch_threads(args.threads), torch.inference_mode():
        timings = time_alternating(runners, rounds=args.timing_rounds)
    shape = "×".join(str(v) for v in x.shape)
    print(f"latency at {shape}, {args.threads} threads, median of {args.timing_rounds} alternating passes:")
    print(timing_table(timings))
    for line in int8_speed_lines(timings, backend, shape):
        print(line)


def int8_speed_lines(timings: dict[str, Any], backend: str, shape: str) -> list[str]:
    """The INT8 model's speed against fp32 (eager PyTorch and its own runtime) at the record's input
    size on this machine, and one warning line when it is slower than either: INT8's fixed costs
    (quantize/dequantize around the float layers) can outweigh its gains at small inputs."""
    int8, eager, fp32 = timings[f"{backend} int8"], timings["eager fp32"], timings[f"{backend} fp32"]
    lines = [f"INT8 speed-up over eager PyTorch fp32: {int8.speedup_over(eager):.2f}×; over {backend} fp32: {int8.speedup_over(fp32):.2f}×"]
    slower = [f"{name} ({timing.median_ms:.1f} ms)" for name, timing in (("eager PyTorch fp32", eager), (f"{backend} fp32", fp32))
              if timing.median_ms < int8.median_ms]
    if slower:
        lines.append(f"warning: on this machine at {shape} the INT8 model ({int8.median_ms:.1f} ms) is slower than "
                     f"{' and '.join(slower)}; predict with the faster one unless the smaller file matters")
    return lines


def _format_from_suffix(output: str | None) -> str:
    if output is None or output.lower().endswith(".onnx"):
        return "onnx"
    if output.lower().endswith(".xml"):
        return "openvino"
    if output.lower().endswith((".pt", ".pth", ".ts", ".torchscript", ".jit")):
        return "torchscript"
    raise EffdetsegError(f"{output}: cannot tell the format from the suffix; pass --format onnx|torchscript|openvino")


def _output_path(output: str | None, source: Path, fmt: str) -> Path:
    if output:
        return Path(output)
    return source.with_name(source.name.split(".")[0] + SUFFIXES[fmt])


def _export_hub(args: argparse.Namespace) -> int:
    """--format hub: the model folder of ``save_pretrained`` (no tracing, no parity check: the
    weights are the checkpoint's, bit for bit)."""
    from ..io.build import model_from_file
    from ..io.model_files import read_model_file
    from ..sharing.hub import save_pretrained

    if args.int8 or args.image or args.resolution is not None:
        raise EffdetsegError("--int8, --image and --resolution are for ONNX / TorchScript / OpenVINO exports, not --format hub")
    if args.weights:
        source = Path(args.weights)
        model = model_from_file(read_model_file(source), model_name=args.model, num_classes=args.num_classes)
    else:
        source = Path(args.checkpoint)
        model = None
    output = Path(args.output) if args.output else source.with_name(source.name.split(".")[0] + "-hub")
    if output.exists() and not output.is_dir():
        raise EffdetsegError(f"{output}: --output must be a folder with --format hub")
    from ..io.files import check_replaceable
    from ..io.model_files import FOLDER_WEIGHTS

    check_replaceable(output / FOLDER_WEIGHTS)  # an earlier model folder's weights are not replaced
    folder = save_pretrained(
        model if model is not None else source, output,
        push_to_hub=bool(args.push_to_hub), repo_id=args.push_to_hub, license=args.license,
    )
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')))}")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..data.image_io import read_image
    from ..devices import resolve_device
    from ..export.formats import export_onnx, export_openvino, export_torchscript
    from ..export.parity import generated_parity_image, parity_check
    from ..inference.predictor import Predictor, check_segmentation
    from ..inference.prepare import fold_batchnorm
    from ..io.build import model_from_file
    from ..io.files import ensure_output_folder
    from ..io.model_files import read_model_file
    from ..io.record import ModelRecord

    if bool(args.checkpoint) == bool(args.weights):
        raise EffdetsegError("give exactly one of --checkpoint PATH or --weights PATH (with --model and --num-classes)")
    if args.weights and not args.model:
        raise EffdetsegError("--weights needs --model NAME (e.g. efficientdet_d4_seg)")
    if args.format == "hub":
        return _export_hub(args)
    if args.push_to_hub:
        raise EffdetsegError("--push-to-hub is for --format hub")
    source = Path(args.checkpoint or args.weights)
    if args.format is None and args.output and Path(args.output).is_dir():
        raise EffdetsegError(f"{args.output}: is a folder; --output must be a file name (or give --format openvino)")
    fmt = args.format or _format_from_suffix(args.output)
    if fmt == "openvino":
        from ..inference.backends import require_openvino

        require_openvino()  # one line before any work when the extra is missing
        if args.output and args.output.lower().endswith(".xml"):
            args.output = str(Path(args.output).parent)  # the IR folder that holds model.xml
        if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
            raise EffdetsegError(f"{args.output}: is a file; --output must be a folder with --format openvino")
    elif args.output and Path(args.output).is_dir():
        raise EffdetsegError(f"{args.output}: is a folder; --output must be a file name")
    output = _output_path(args.output, source, fmt)
    if output.resolve() == source.resolve():
        raise EffdetsegError(f"{output}: --output would overwrite the checkpoint")
    check_outputs(output, fmt, args.int8)
    ensure_output_folder(output.parent)
    int8 = _int8_plan(args, fmt, source, output)
    if int8 is not None:
        output = int8.fp32_path  # the fp32 file is written and checked first, beside the INT8 one
    device = resolve_device(args.device)
    if args.image:
        images, image_name = [read_image(args.image)], args.image
    else:
        images, image_name = [generated_parity_image()], "a generated scene"

    file = read_model_file(source)
    model = model_from_file(file, model_name=args.model, num_classes=args.num_classes)
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
    elif fmt == "openvino":
        export_openvino(folded, output, record)
    else:
        export_torchscript(folded, output, record)
    size_mb = (sum(p.stat().st_size for p in output.iterdir() if p.is_file()) if output.is_dir() else output.stat().st_size) / 2**20
    print(f"wrote {output} ({fmt}, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")

    print(f"parity check against PyTorch on {image_name} ({record.preprocessing.describe()}):")
    exported = Predictor(output, device=device)
    results = parity_check(model, exported, images, record.preprocessing)
    for result in results:
        print(f"  {result}")
    if not all(result.passed for result in results):
        print(f"effdetseg export: error: parity check failed; {output} does not match the checkpoint", file=sys.stderr)
        return 1
    return _quantize(int8, args, source) if int8 is not None else 0
