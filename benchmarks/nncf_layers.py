"""Which layers NNCF's INT8 must keep in fp32: argmax agreement with OpenVINO fp32, one variant at a time.

The checkpoint is exported as `effdetseg export --format openvino` does (BatchNorm folded, ONNX, read
by OpenVINO); each variant is the export's NNCF quantization (`quantize_openvino`) with the same calibration images
(CamVid train frames, spread over the split, preprocessed by the one inference path with the
checkpoint's record) and a different set of layers kept in fp32: the named groups of
`effdetseg.export.quantize_openvino.SENSITIVE_LAYERS` (its `ignored_scope`) plus, per variant, extra name patterns or
OpenVINO operation types. Each quantized model is scored by the fraction of pixels whose argmax
matches OpenVINO fp32 on held-out CamVid val frames. Needs the extra: pip install -e '.[openvino]'.
The table's rows go to ``benchmarks/results/nncf_layers_<date>.json`` and ``.csv`` (date, CPU,
commit; ``--results-dir DIR``, ``--no-results``).

    python benchmarks/nncf_layers.py --checkpoint experiments/camvid/best.pth
    python benchmarks/nncf_layers.py --checkpoint experiments/camvid/best.pth --variants none,default,pad+fusion --unprepared
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from effdetseg.export.calibration import open_image_source
from effdetseg.export.formats import openvino_model
from effdetseg.export.quantize_openvino import (
    DEFAULT_KEEP_FLOAT,
    LayerGroup,
    NncfRecipe,
    quantize_openvino,
    require_nncf,
)
from effdetseg.inference.backends import require_openvino
from effdetseg.inference.onnx_graph import onnx_bytes
from effdetseg.inference.prepare import fold_batchnorm
from effdetseg.inference.segment import preprocess
from effdetseg.io.build import model_from_file
from effdetseg.io.model_files import read_model_file
from results_file import add_results_argument, parameters, write_results_from_args

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
PAD_ONLY = ("pad", "stem", "classifier", "upsampler")
# name → (groups kept in fp32, extra name patterns, extra operation types)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), (), ()),
    "default": (DEFAULT_KEEP_FLOAT, (), ()),
    "pad": (PAD_ONLY, (), ()),
    "pad+decoder": (PAD_ONLY, (r"^(?!.*backbone).*$",), ()),
    "pad+backbone": ((*PAD_ONLY, "backbone"), (), ()),
    "pad+Multiply": (PAD_ONLY, (), ("Multiply",)),
    "pad+Add": (PAD_ONLY, (), ("Add",)),
    "pad+GroupConvolution": (PAD_ONLY, (), ("GroupConvolution",)),
    "pad+fuse": (PAD_ONLY, (r".*/fuse/.*",), ()),
    "pad+projections": (PAD_ONLY, (r".*/edges\.\d+/project/.*",), ()),
    "pad+resamples": (PAD_ONLY, (r".*/edges\.\d+/(down|Resize).*",), ()),
    "pad+extra_levels": (PAD_ONLY, (r".*/extra_levels/.*",), ()),
    "pad+bifpn": (PAD_ONLY, (r".*/bifpn/.*",), ()),
    "pad+top_down": (PAD_ONLY, (r".*/top_down/.*",), ()),
    "pad+head": (PAD_ONLY, (r".*/head/.*",), ()),
    "pad+fusion": ((*PAD_ONLY, "fusion"), (), ()),  # the default while the depthwise weights were not folded
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a CamVid-trained effdetseg checkpoint")
    parser.add_argument("--data-root", default=str(CAMVID))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--check-images", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unprepared", action="store_true",
                        help="quantize the graph as read from ONNX, not prepared for NNCF (effdetseg before the fix)")
    add_results_argument(parser)
    args = parser.parse_args()
    ov, nncf = require_openvino(), require_nncf()
    nncf.set_log_level(logging.ERROR)
    torch.set_num_threads(args.threads)

    file = read_model_file(args.checkpoint)
    record = file.record
    network = model_from_file(file).eval()
    model = openvino_model(onnx_bytes(fold_batchnorm(network)[0], record), record)
    train, val = open_image_source(f"{args.data_root}/train"), open_image_source(f"{args.data_root}/val")

    def spread(count: int, wanted: int) -> list[int]:
        return list(range(0, count, max(1, count // wanted)))[:wanted]

    calibration = spread(train.count, args.calibration_images)
    held_out = [preprocess(val.load(i), record.preprocessing).numpy() for i in spread(val.count, args.check_images)]
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    reference = core.compile_model(model, "CPU", config)
    expected = [np.asarray(reference(x)[0]).argmax(1) for x in held_out]
    print(f"{args.checkpoint}: {len(calibration)} calibration images (train), {len(held_out)} held-out (val), "
          f"input {tuple(held_out[0].shape)}; agreement with OpenVINO fp32")
    print("| kept in fp32 | agreement |\n|---|---|")
    rows = []
    for name in args.variants.split(","):
        groups, patterns, types = VARIANTS[name]
        started = time.perf_counter()
        # the export's own quantization (its preset, bias correction, graph preparation), other layers kept in fp32
        quantized = quantize_openvino(model, train, calibration, record.preprocessing, NncfRecipe(keep_float=groups),
                                      extra_float=LayerGroup(patterns, types), prepare=not args.unprepared)
        compiled = core.compile_model(quantized, "CPU", config)
        agreement = np.mean([(np.asarray(compiled(x)[0]).argmax(1) == e).mean() for x, e in zip(held_out, expected)])
        label = "+".join(groups) + "".join(f" +{p}" for p in (*patterns, *types))
        seconds = time.perf_counter() - started
        print(f"| {name}: {label} | {100 * agreement:.2f} % |  ({seconds:.0f} s)", flush=True)
        rows.append({"variant": name, "kept_in_fp32": label, "agreement": float(agreement), "seconds": seconds})
    info = {"argv": sys.argv[1:], **parameters(args), "calibration": len(calibration), "held_out": len(held_out),
            "input": list(held_out[0].shape)}
    write_results_from_args(args, "nncf_layers", rows, info=info)


if __name__ == "__main__":
    main()
