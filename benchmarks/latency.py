"""CPU fp32 latency of one 3×512×512 image: EfficientDet-Seg against segmentation_models_pytorch FPN.

Each pair runs alternately in this one process (ours, FPN, ours, FPN, …), so a noisy machine slows
both alike and the ratio holds. Both models run in the same memory format: channels-last (what
`effdetseg predict` and `benchmark` use on CPU: oneDNN's depthwise convolutions are about twice as
fast in NHWC) and contiguous NCHW (a plain ``create_model(...).eval()`` called with an NCHW tensor).
In the channels-last round a third model runs too: ours as ``predict`` and ``Predictor`` run it
(``effdetseg.prepare_for_inference``: BatchNorm folded, channels-last), against the FPN at its own
best (channels-last, inference mode). Prints the median and p90 of each and the ratios ours/FPN,
and writes those lines to ``benchmarks/results/latency_<date>.json`` and ``.csv`` (date, CPU, commit;
``--results-dir``, ``--no-results``).

    python benchmarks/latency.py [--resolution 512] [--repeats 9] [--warmup 2] [--threads N]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import warnings

import torch

import effdetseg
from results_file import add_results_argument, parameters, write_results_from_args

PAIRS = [("efficientdet_d0_seg", "tu-efficientnet_b0"), ("efficientdet_d4_seg", "tu-efficientnet_b4")]


def timed(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per model (≥ 7)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=21)
    add_results_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import segmentation_models_pytorch as smp

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, 1×3×{args.resolution}×{args.resolution}")
    rows = []
    for (ours_name, encoder), memory_format in itertools.product(PAIRS, (torch.channels_last, torch.contiguous_format)):
        torch.manual_seed(0)
        x = torch.randn(1, 3, args.resolution, args.resolution).contiguous(memory_format=memory_format)
        ours = effdetseg.create_model(ours_name, num_classes=args.num_classes).eval().to(memory_format=memory_format)
        fpn = smp.FPN(encoder_name=encoder, encoder_weights=None, classes=args.num_classes).eval().to(memory_format=memory_format)
        models = {"ours": ours, "fpn": fpn}
        if memory_format == torch.channels_last:
            models["prepared"] = effdetseg.prepare_for_inference(ours, "cpu")
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for _ in range(args.warmup):
                for model in models.values():
                    timed(model, x)
            for _ in range(args.repeats):
                for name, model in models.items():
                    times[name].append(timed(model, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
        layout = "channels_last" if memory_format == torch.channels_last else "NCHW"
        print(
            f"{layout:13s} {ours_name:22s} median {med['ours'] * 1e3:8.1f} ms (p90 {p90['ours'] * 1e3:7.1f})   "
            f"smp FPN {encoder:22s} median {med['fpn'] * 1e3:8.1f} ms (p90 {p90['fpn'] * 1e3:7.1f})   "
            f"ratio ours/FPN {med['ours'] / med['fpn']:.2f}"
        )
        against = {"fpn_encoder": encoder, "fpn_median_ms": med["fpn"] * 1e3, "fpn_p90_ms": p90["fpn"] * 1e3}
        rows.append({"layout": layout, "model": ours_name, "median_ms": med["ours"] * 1e3, "p90_ms": p90["ours"] * 1e3,
                     **against, "ratio": med["ours"] / med["fpn"],
                     "samples_ms": [t * 1e3 for t in times["ours"]], "fpn_samples_ms": [t * 1e3 for t in times["fpn"]]})
        if "prepared" in med:
            print(
                f"{'prepared':13s} {ours_name:22s} median {med['prepared'] * 1e3:8.1f} ms (p90 {p90['prepared'] * 1e3:7.1f})   "
                f"as predict runs it, against the FPN above: ratio {med['prepared'] / med['fpn']:.2f}"
            )
            rows.append({"layout": "prepared", "model": ours_name, "median_ms": med["prepared"] * 1e3,
                         "p90_ms": p90["prepared"] * 1e3, **against, "ratio": med["prepared"] / med["fpn"],
                         "samples_ms": [t * 1e3 for t in times["prepared"]]})
    info = {"argv": sys.argv[1:], "torch": torch.__version__, **parameters(args), "threads": torch.get_num_threads(), "dtype": "fp32"}
    write_results_from_args(args, "latency", rows, info=info)


if __name__ == "__main__":
    main()
