"""What `effdetseg train` delivers against the bare training step of the same model, batch and size.

Runs the README's CamVid command (read from README.md: what a user copies) with a time budget in a
subprocess, then, in this process, the bare step the trainer wraps: forward, cross-entropy,
backward, AdamW step on a batch of the same shape, with the same number of threads. Prints the
ratio of images per second (training phase, and the whole command), and where the trainer's time
went, from the per-phase seconds it logs in metrics.jsonl (waiting for data, forward, loss terms,
backward, optimizer, EMA, host syncs, logging, checkpoints; validation, setup and the finish
measured around them), plus what decoding and augmenting one batch costs when done in one process.
The table's rows (one per phase) go to ``benchmarks/results/trainer_overhead_<date>.json`` and
``.csv`` (date, CPU, commit; ``--results-dir DIR``, ``--no-results``), the figures above it to the
JSON's ``summary``.

    python benchmarks/trainer_overhead.py                         # 4-minute run of the README command
    python benchmarks/trainer_overhead.py --minutes 2 -- data.cache=none data.num_workers=2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_commands import camvid_command, run_command  # noqa: E402
from results_file import add_results_argument, parameters, write_results_from_args  # noqa: E402

BARE_PHASES = ("forward", "backward", "optimizer")  # what the bare step also does (its loss: cross-entropy)


def bare_step(cfg, threads: int, steps: int, warmup: int) -> tuple[float, int]:
    """Median seconds of forward + cross-entropy + backward + AdamW on the config's model and batch
    (with the config's frozen backbone layers)."""
    import torch

    from effdetseg.engine.builders import build_model, freeze_backbone_layers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg.train.model).train()
    for layer in freeze_backbone_layers(model, int(cfg.train.freeze_backbone_stride)):  # as the trainer freezes them
        layer.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    batch = int(cfg.data.batch_size)
    height, width = int(cfg.data.preprocessing.resize_height), int(cfg.data.preprocessing.resize_width)
    images = torch.randn(batch, 3, height, width)
    masks = torch.randint(0, int(cfg.data.num_classes), (batch, height, width))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), batch


def data_costs(cfg, samples: int) -> tuple[float, float]:
    """Milliseconds per batch of decoding (reading files) and of augmenting, in one process."""
    from effdetseg.data import build_dataset

    dataset = build_dataset(cfg.data, "train")
    count = min(samples, len(dataset))
    start = time.perf_counter()
    pairs = [dataset.load(i) for i in range(count)]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    for i, (image, mask) in enumerate(pairs):
        dataset.transform.set_seed(i)
        dataset.transform(image, mask)
    augment = time.perf_counter() - start
    batch = int(cfg.data.batch_size)
    return 1e3 * decode / count * batch, 1e3 * augment / count * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="train.max_minutes of the measured run")
    parser.add_argument("--bare-steps", type=int, default=6)
    parser.add_argument("--keep", help="keep the experiment in this folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="more overrides for the command (after --)")
    add_results_argument(parser)
    args = parser.parse_args()

    from effdetseg.configs.compose import compose
    from effdetseg.engine.loaders import plan_cpu
    import torch

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="trainer_overhead_"))
    folder.mkdir(parents=True, exist_ok=True)
    command = camvid_command(folder, "run", [f"train.max_minutes={args.minutes:g}", *args.overrides])
    print(f"$ {command}", flush=True)
    wall = run_command(command, folder / "run.log")
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]

    # The run's own resolved config for the bare step: model, batch, crop, threads.
    cfg = compose([], base=folder / "run" / "config.yaml")
    plan = plan_cpu(torch.device("cpu"), cfg.train.threads, cfg.data.num_workers, cfg.data.cache == "ram")

    images = sum(r["images"] for r in records)
    steps = sum(r["steps"] for r in records)
    train_s = sum(r["epoch_time_s"] for r in records)
    validation_s = sum(r.get("validation_s", 0.0) for r in records)
    phases: dict[str, float] = {}
    for r in records:
        for name, seconds in r["time_s"].items():
            phases[name] = phases.get(name, 0.0) + seconds
    trainer_rate = images / train_s

    bare_s, batch = bare_step(cfg, plan.threads, args.bare_steps, warmup=2)
    bare_rate = batch / bare_s
    decode_ms, augment_ms = data_costs(cfg, 48)

    print(f"\nmodel {cfg.train.model.name} ({cfg.train.model.backbone}), batch {batch} × "
          f"{cfg.data.preprocessing.resize_height}×{cfg.data.preprocessing.resize_width}, {plan.threads} thread(s), "
          f"data.cache={cfg.data.cache}, {plan.workers} worker(s)")
    print(f"bare step (forward, cross-entropy, backward, AdamW): {bare_s:.3f} s → {bare_rate:.2f} img/s")
    print(f"effdetseg train: {steps} steps, {images} images in {train_s:.1f} s of training → {trainer_rate:.2f} img/s "
          f"({train_s / max(steps, 1):.3f} s/step)")
    print(f"ratio (training phase): {trainer_rate / bare_rate:.3f}")
    print(f"whole command: {wall:.1f} s for a {args.minutes:g}-minute budget; {images / wall:.2f} img/s over it "
          f"({images / wall / bare_rate:.3f} of the bare step)")
    print("\nwhere the time went | seconds | per step | share of the command")
    print("|---|---|---|---|")
    rows = sorted(phases.items(), key=lambda kv: -kv[1])
    rows += [("validation", validation_s), ("setup, finish and the rest", wall - train_s - validation_s)]
    for name, seconds in rows:
        tag = " (bare step's work)" if name in BARE_PHASES else ""
        print(f"| {name}{tag} | {seconds:.1f} | {seconds / max(steps, 1):.3f} | {100 * seconds / wall:.1f} % |")
    print(f"\ndata pipeline per batch in one process: decoding {decode_ms:.0f} ms, augmentation {augment_ms:.0f} ms "
          "(with data.cache=ram only augmentation runs per epoch)")
    print(f"experiment: {folder / 'run'}")
    phases_table = [{"phase": name, "bare_step_work": name in BARE_PHASES, "seconds": seconds,
                     "per_step_s": seconds / max(steps, 1), "share_of_command": seconds / wall} for name, seconds in rows]
    info = {
        "argv": sys.argv[1:], **parameters(args), "command": command, "experiment": str(folder / "run"),
        "model": cfg.train.model.name, "backbone": cfg.train.model.backbone, "batch": batch,
        "size": [int(cfg.data.preprocessing.resize_height), int(cfg.data.preprocessing.resize_width)],
        "threads": plan.threads, "workers": plan.workers, "cache": str(cfg.data.cache),
    }
    summary = {
        "bare_step_s": bare_s, "bare_img_per_s": bare_rate, "steps": steps, "images": images, "train_s": train_s,
        "trainer_img_per_s": trainer_rate, "ratio_training": trainer_rate / bare_rate, "wall_s": wall,
        "command_img_per_s": images / wall, "ratio_command": images / wall / bare_rate,
        "validation_s": validation_s, "decode_ms_per_batch": decode_ms, "augment_ms_per_batch": augment_ms,
    }
    write_results_from_args(args, "trainer_overhead", phases_table, info=info, extra={"summary": summary})


if __name__ == "__main__":
    main()
