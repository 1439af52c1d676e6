"""``effdetseg export --int8``: after the fp32 ONNX file, its INT8 version and the two checks.

The fp32 file goes beside the output as ``NAME.fp32.onnx``; ``--output`` becomes the INT8 (QDQ)
model, calibrated on ``--calibration-images`` real images (a folder, or a data preset's train
split). Then, on images of the same source that were not calibrated on, the INT8 file's label
maps are compared with the checkpoint's through the Predictor, and the INT8 file, the fp32 file
and the eager PyTorch checkpoint (channels-last, inference mode) are timed alternately at the
export size. Exit 1 when the agreement is below ``--min-agreement``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffdetsegError
from ..predictor import Predictor
from ..quantize import CALIBRATION_METHODS, ImageSource

DEFAULT_CALIBRATION_IMAGES = 48
DEFAULT_CHECK_IMAGES = 16
DEFAULT_MIN_AGREEMENT = 98.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("INT8 (ONNX Runtime static quantization)")
    group.add_argument("--int8", action="store_true", help="write --output as an INT8 QDQ model (the fp32 one as NAME.fp32.onnx)")
    group.add_argument("--calibration", help="a folder of real images, or a data preset (camvid, voc, …) whose train split is used")
    group.add_argument("--data-root", help="data.root of the --calibration preset (default: the experiment's config.yaml beside the checkpoint)")
    group.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
        help=f"images to calibrate on, spread over the source (default: {DEFAULT_CALIBRATION_IMAGES})",
    )
    group.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax", help="activation ranges from (default: minmax)")
    group.add_argument(
        "--check-images", type=int, default=DEFAULT_CHECK_IMAGES,
        help=f"held-out images of the source for the agreement check (default: {DEFAULT_CHECK_IMAGES})",
    )
    group.add_argument(
        "--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
        help=f"exit 1 below this %% of pixels labelled as the checkpoint does (default: {DEFAULT_MIN_AGREEMENT:g})",
    )
    group.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes for the speed-up (default: 2)")
    group.add_argument("--timing-rounds", type=int, default=10, help="alternating timed passes (default: 10)")


@dataclass
class Int8Plan:
    """The checked --int8 options and the opened calibration source, before any export work."""

    output: Path  # the INT8 file
    source: ImageSource
    calibration: list[int]
    held_out: list[int]
    args: argparse.Namespace

    @property
    def fp32_path(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.fp32{self.output.suffix}")


def plan(args: argparse.Namespace, fmt: str, checkpoint: Path, output: Path) -> Int8Plan | None:
    """None without --int8; else the plan, or one error line for a bad option or source."""
    if not args.int8:
        if args.calibration:
            raise EffdetsegError("--calibration is for --int8 exports")
        return None
    if fmt != "onnx":
        raise EffdetsegError("--int8 writes ONNX; give an --output ending in .onnx")
    if not args.calibration:
        raise EffdetsegError("--int8 needs --calibration: a folder of real images or a data preset such as camvid")
    if args.check_images < 1 or args.threads < 1 or args.timing_rounds < 1:
        raise EffdetsegError("--check-images, --threads and --timing-rounds must be at least 1")
    from ..quantize import open_image_source, split_images

    source = open_image_source(args.calibration, args.data_root or _experiment_data_root(checkpoint, args.calibration))
    calibration, held_out = split_images(source.count, args.calibration_images, args.check_images)
    return Int8Plan(output, source, calibration, held_out, args)


def _experiment_data_root(checkpoint: Path, preset: str) -> str | None:
    """``data.root`` of the experiment the checkpoint came from, when it trained on ``preset``."""
    config_file = checkpoint.parent / "config.yaml"
    if not config_file.is_file():
        return None
    from omegaconf import OmegaConf

    data = OmegaConf.load(config_file).get("data") or {}
    return data.get("root") if data.get("name") == preset else None


def run(int8: Int8Plan, predictor: Predictor) -> int:
    """Quantize the fp32 file into the INT8 one, then print the agreement and the speed-up;
    ``predictor`` runs the checkpoint (the reference)."""
    import torch

    from ..predictor import preprocess
    from ..quantize import QuantizationRecipe, quantize_onnx
    from ..runtime_comparison import eager_and_onnx_runners, label_agreement, time_alternating, timing_table, torch_threads

    args, source, fp32_path, output = int8.args, int8.source, int8.fp32_path, int8.output
    recipe = QuantizationRecipe(method=args.calibration_method)
    print(f"calibrating on {len(int8.calibration)} images of {source.description} ({recipe.describe()}) …")
    started = time.perf_counter()
    quantize_onnx(fp32_path, output, source, int8.calibration, predictor.preprocessing, recipe)
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} (INT8 QDQ, {size_mb:.1f} MiB) in {time.perf_counter() - started:.1f} s")

    quantized = Predictor(output, device="cpu")
    held_out = [source.load(i) for i in int8.held_out]
    agreement = label_agreement(predictor, quantized, held_out)
    print(
        f"argmax agreement with the checkpoint on {agreement.images} held-out images: "
        f"{100 * agreement.fraction:.2f} % of pixels (lowest image {100 * agreement.worst_image:.2f} %)"
    )

    x = preprocess(held_out[0], predictor.preprocessing)
    runners = eager_and_onnx_runners(copy.deepcopy(predictor.model), {"onnxruntime fp32": fp32_path, "onnxruntime int8": output}, x, args.threads)
    with torch_threads(args.threads), torch.inference_mode():
        timings = time_alternating(runners, rounds=args.timing_rounds)
    shape = "×".join(str(v) for v in x.shape)
    print(f"latency at {shape}, {args.threads} threads, median of {args.timing_rounds} alternating passes:")
    print(timing_table(timings))
    speedup = timings["onnxruntime int8"].speedup_over(timings["eager fp32"])
    print(f"INT8 speed-up over eager PyTorch fp32: {speedup:.2f}×")
    if 100 * agreement.fraction < args.min_agreement:
        print(f"effdetseg export: error: INT8 agreement {100 * agreement.fraction:.2f} % is below --min-agreement {args.min_agreement:g} %", file=sys.stderr)
        return 1
    return 0
