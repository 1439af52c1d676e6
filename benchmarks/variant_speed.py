"""Training-step time of architecture variants on one encoder, alternating in one process.

The ms/step column of the README's quality ablation: each variant (``name[key=value,…]`` as in
``benchmarks/quality.py``) and smp's FPN on the same encoder run forward + cross-entropy + backward +
AdamW on one fixed batch, in turns, so a noisy machine slows all alike; the median per variant and
its ratio to the FPN are printed and written to ``benchmarks/results/variant_speed_<date>.json`` and
``.csv`` (date, CPU, commit; ``--results-dir``, ``--no-results``).

    python benchmarks/variant_speed.py --models "efficientdet_d0_seg,efficientdet_d0_seg[bifpn_channels=64]" \\
        [--encoder tf_efficientnet_lite0] [--batch 8] [--size 256] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from quality import SMP_ARCHS, parse_candidate, split_candidates
from results_file import add_results_argument, parameters, write_results_from_args


def build(text: str, encoder: str, num_classes: int) -> torch.nn.Module:
    name, overrides = parse_candidate(text)
    if name in SMP_ARCHS:
        import segmentation_models_pytorch as smp

        return getattr(smp, SMP_ARCHS[name])(f"tu-{encoder}", encoder_weights=None, classes=num_classes, **overrides)
    import effdetseg

    return effdetseg.create_model(name, num_classes=num_classes, backbone=encoder, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--encoder", default="tf_efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    add_results_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = split_candidates(args.models) + ["smp_fpn"]
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 11, (args.batch, args.size, args.size))
    models = {n: build(n, args.encoder, 11).train() for n in names}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(args.repeats + 1):
        for n, model in models.items():
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizers[n].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[n].step()
            if repeat:  # the first round warms up
                times[n].append(time.perf_counter() - start)
    fpn = statistics.median(times["smp_fpn"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch}×3×{args.size}², encoder {args.encoder}")
    rows = []
    for n in names:
        med = statistics.median(times[n])
        print(f"{med * 1e3:8.0f} ms/step   ratio to FPN {med / fpn:.2f}   {n}")
        rows.append({"model": n, "ms_per_step": med * 1e3, "ratio_to_fpn": med / fpn, "samples_ms": [t * 1e3 for t in times[n]]})
    info = {"argv": sys.argv[1:], "torch": torch.__version__, **parameters(args), "threads": torch.get_num_threads()}
    write_results_from_args(args, "variant_speed", rows, info=info)


if __name__ == "__main__":
    main()
