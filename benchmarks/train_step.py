"""Training-step speed and memory: EfficientDet-Seg against smp's FPN on the same timm encoder.

One step = forward, cross-entropy, backward, AdamW step. Two settings, as in the issue that asked
for this: D0 at 8×3×256² (FPN on ``tu-efficientnet_b0``) and D4 at 4×3×512² (``tu-efficientnet_b4``),
each in NCHW and in channels-last (model and input). Time: both models of a pair are built in this
process and stepped alternately (ours, FPN, ours, FPN, …), so a noisy machine slows both alike; the
median of ``--repeats`` steps after ``--warmup``. Peak memory: on CUDA ``max_memory_allocated``; on
the CPU, where PyTorch has no allocator statistics, each model runs a few steps in a fresh
subprocess, which resets its resident-set high-water mark after building the model (Linux
``/proc/self/clear_refs``) and reports how far it rose above the resident set during three steps
(activations, gradients and optimizer state). ``--grad-checkpointing`` adds a third model: ours
with ``set_grad_checkpointing()`` (``train.grad_checkpointing=true``), which recomputes activations
in the backward pass: less memory for more time. Each printed setting (with its checkpointing line)
is one row of ``benchmarks/results/train_step_<date>.json`` and ``.csv`` (date, CPU, GPU, commit;
``--results-dir DIR``, ``--no-results``).

    python benchmarks/train_step.py [--settings d0,d4] [--formats nchw,channels_last] [--repeats 5] [--grad-checkpointing]
                                    [--threads 2] [--device cpu|cuda] [--results-dir DIR]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
import warnings

import torch

from results_file import add_results_argument, parameters, write_results_from_args

SETTINGS = {
    "d0": {"ours": "efficientdet_d0_seg", "encoder": "tu-efficientnet_b0", "batch": 8, "size": 256},
    "d4": {"ours": "efficientdet_d4_seg", "encoder": "tu-efficientnet_b4", "batch": 4, "size": 512},
}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
NUM_CLASSES = 21


def build(kind: str, setting: dict) -> torch.nn.Module:
    if kind in ("ours", "ours_ckpt"):
        import effdetseg

        model = effdetseg.create_model(setting["ours"], num_classes=NUM_CLASSES)
        model.set_grad_checkpointing(kind == "ours_ckpt")
        return model
    import segmentation_models_pytorch as smp

    return smp.FPN(encoder_name=setting["encoder"], encoder_weights=None, classes=NUM_CLASSES)


class Stepper:
    """A model, its AdamW and one fixed batch: ``step()`` runs one full training step."""

    def __init__(self, model: torch.nn.Module, setting: dict, memory_format: torch.memory_format, device: torch.device) -> None:
        self.model = model.to(device=device, memory_format=memory_format).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        shape = (setting["batch"], 3, setting["size"], setting["size"])
        self.images = torch.randn(shape, generator=generator).to(device).contiguous(memory_format=memory_format)
        self.masks = torch.randint(0, NUM_CLASSES, (shape[0], *shape[2:]), generator=generator).to(device)
        self.device = device

    def step(self) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.model(self.images), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def peak_memory_mb(kind: str, setting_name: str, format_name: str, device: torch.device, threads: int) -> float:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        stepper = Stepper(build(kind, SETTINGS[setting_name]), SETTINGS[setting_name], FORMATS[format_name], device)
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            stepper.step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    args = [sys.executable, __file__, "--memory-worker", kind, setting_name, format_name, "--threads", str(threads)]
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_worker(kind: str, setting_name: str, format_name: str) -> None:
    stepper = Stepper(build(kind, SETTINGS[setting_name]), SETTINGS[setting_name], FORMATS[format_name], torch.device("cpu"))
    gc.collect()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    for _ in range(3):
        stepper.step()
    print((_status_kb("VmHWM") - base) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="d0,d4")
    parser.add_argument("--formats", default="nchw,channels_last")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grad-checkpointing", action="store_true", help="also time ours with gradient checkpointing")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    add_results_argument(parser)
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, fp32; forward + backward + AdamW")
    results = []
    kinds = ("ours", "ours_ckpt", "fpn") if args.grad_checkpointing else ("ours", "fpn")
    for setting_name in args.settings.split(","):
        setting = SETTINGS[setting_name]
        for format_name in args.formats.split(","):
            torch.manual_seed(0)
            steppers = {kind: Stepper(build(kind, setting), setting, FORMATS[format_name], device) for kind in kinds}
            times: dict[str, list[float]] = {kind: [] for kind in steppers}
            for _ in range(args.warmup):
                for stepper in steppers.values():
                    stepper.step()
            for _ in range(args.repeats):
                for kind, stepper in steppers.items():
                    times[kind].append(stepper.step())
            del steppers
            median = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
            memory = {} if args.no_memory else {kind: peak_memory_mb(kind, setting_name, format_name, device, args.threads) for kind in times}
            row = {
                "setting": setting_name,
                "format": format_name,
                "batch": f"{setting['batch']}x3x{setting['size']}x{setting['size']}",
                "ours": setting["ours"],
                "fpn": f"smp FPN {setting['encoder']}",
                "ours_ms": median["ours"],
                "fpn_ms": median["fpn"],
                "time_ratio": median["ours"] / median["fpn"],
                "ours_peak_mb": memory.get("ours"),
                "fpn_peak_mb": memory.get("fpn"),
                "memory_ratio": memory["ours"] / memory["fpn"] if memory else None,
            }
            if "ours_ckpt" in median:
                row["ours_ckpt_ms"] = median["ours_ckpt"]
                row["ckpt_time_ratio"] = median["ours_ckpt"] / median["fpn"]
                row["ours_ckpt_peak_mb"] = memory.get("ours_ckpt")
                row["ckpt_memory_ratio"] = memory["ours_ckpt"] / memory["fpn"] if memory else None
            results.append(row)
            mem_text = (
                f"   peak memory {memory['ours']:.0f} MB vs {memory['fpn']:.0f} MB (ratio {row['memory_ratio']:.2f})" if memory else ""
            )
            print(
                f"{setting_name} {row['batch']:12s} {format_name:13s} ours {median['ours']:8.0f} ms   {row['fpn']} {median['fpn']:8.0f} ms"
                f"   ratio {row['time_ratio']:.2f}{mem_text}",
                flush=True,
            )
            if "ours_ckpt" in median:
                ckpt_mem = f"   peak memory {memory['ours_ckpt']:.0f} MB (ratio {row['ckpt_memory_ratio']:.2f})" if memory else ""
                print(f"   with gradient checkpointing: ours {median['ours_ckpt']:8.0f} ms   ratio {row['ckpt_time_ratio']:.2f}{ckpt_mem}", flush=True)
    info = {"argv": sys.argv[1:], "torch": torch.__version__, **parameters(args), "threads": torch.get_num_threads(),
            "dtype": "fp32", "num_classes": NUM_CLASSES}
    info.pop("memory_worker")
    write_results_from_args(args, "train_step", results, info=info)


if __name__ == "__main__":
    main()
