"""The results files every benchmark writes: ``benchmarks/results/<name>_<YYYYmmdd-HHMMSS>.json`` and ``.csv``.

The JSON holds the machine (``machine_info``: date, CPU model, cores, GPU, git commit, uncommitted
changes), the run's parameters, ``"results"`` (one row per line of the printed table, every detail)
and anything else the benchmark adds; the CSV holds the rows alone, each tagged with date, CPU and
commit, floats rounded to 4 digits. This module imports neither torch nor effdetseg.

    from results_file import add_results_argument, parameters, write_results_from_args
    add_results_argument(parser)      # --results-dir DIR, --no-results
    ...
    write_results_from_args(args, "latency", rows, info=parameters(args))   # prints where it wrote
"""
from __future__ import annotations

import argparse
import csv
import json
import numbers
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
UNCOMMITTED = " + uncommitted changes"
NOT_PARAMETERS = ("results_dir", "no_results")  # add_results_argument's options: where results go, not what ran


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def gpu_name() -> str | None:
    """The first CUDA device's name, asked only of a torch this process has already imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken driver leaves the results without a GPU name, not without results
        return None


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def machine_info() -> dict:
    """Where and on what the results were measured: date (ISO, with its timezone), CPU model, cores,
    GPU (None without one, or when torch is not imported), the repository's commit and whether
    tracked files differ from it."""
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def results_stem(name: str, date: str, results_dir: Path | str = RESULTS) -> Path:
    """``<results_dir>/<name>_<YYYYmmdd-HHMMSS>`` for an ISO ``date`` (now if it does not parse)."""
    try:
        when = datetime.fromisoformat(date)
    except (TypeError, ValueError):
        when = datetime.now()
    return Path(results_dir) / f"{name}_{when.strftime('%Y%m%d-%H%M%S')}"


def commit_tag(info: dict) -> str:
    """The commit as the CSV names it: ``<commit>`` or ``<commit> + uncommitted changes``."""
    return str(info.get("commit", "unknown")) + (UNCOMMITTED if info.get("uncommitted_changes") else "")


def _is_nested(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple))


def _rounded(value: Any) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return round(float(value), 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    """A CSV cell: floats rounded to 4 digits, dicts and lists as JSON (their floats rounded too),
    None empty."""
    value = _rounded(value)
    if _is_nested(value):
        return json.dumps(value, default=str)
    return value


def scalar_fields(rows: Sequence[dict]) -> list[str]:
    """The keys of ``rows`` in order of first appearance, less those holding a dict or a list in any row."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    nested = {k for row in rows for k, v in row.items() if _is_nested(v)}
    return [k for k in keys if k not in nested]


def write_results(
    name: str,
    rows: list[dict],
    *,
    info: dict | None = None,
    extra: dict | None = None,
    results_dir: Path | str = RESULTS,
    fields: Sequence[str] | None = None,
    csv_rows: list[dict] | None = None,
) -> Path:
    """Write ``<results_dir>/<name>_<YYYYmmdd-HHMMSS>.json`` and ``.csv``; return the JSON's path.

    The JSON: ``{**machine_info(), **info, "results": rows, **extra}``. The CSV: columns date, cpu,
    commit (``+ uncommitted changes`` when tracked files differed), then ``fields`` (default: the
    rows' keys whose values are not dicts or lists, in order of first appearance), one line per row
    of ``csv_rows`` (default: ``rows``; a benchmark passes its own when the CSV shows a detail
    differently). The time in the name is ``info``'s ``date`` where it has one: a benchmark that
    writes after every run passes the same ``info`` each time and rewrites the same two files.
    """
    meta = {**machine_info(), **(info or {})}
    stem = results_stem(name, meta["date"], results_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    document = {**meta, "results": rows, **(extra or {})}
    json_path = stem.with_name(stem.name + ".json")
    json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    table = rows if csv_rows is None else csv_rows
    columns = list(fields) if fields is not None else scalar_fields(table)
    tag = {"date": meta["date"], "cpu": meta.get("cpu", "unknown"), "commit": commit_tag(meta)}
    with open(stem.with_name(stem.name + ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["date", "cpu", "commit", *(c for c in columns if c not in tag)], extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow({**{k: _cell(v) for k, v in row.items() if k not in tag}, **tag})
    return json_path


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """``--results-dir DIR`` (default: benchmarks/results) and ``--no-results`` (print only)."""
    parser.add_argument("--results-dir", default=str(RESULTS),
                        help="where the results JSON and CSV go (default: benchmarks/results)")
    parser.add_argument("--no-results", action="store_true", help="print the results only, write no files")


def parameters(args: argparse.Namespace) -> dict:
    """The run's parameters for ``info``: the parsed options less where the results go."""
    return {k: v for k, v in vars(args).items() if k not in NOT_PARAMETERS}


def write_results_from_args(args: argparse.Namespace, name: str, rows: list[dict], *, quiet: bool = False, **kwargs) -> Path | None:
    """``write_results`` into ``args.results_dir`` unless ``args.no_results``; prints where (unless ``quiet``)."""
    if getattr(args, "no_results", False):
        return None
    path = write_results(name, rows, results_dir=Path(args.results_dir), **kwargs)
    if not quiet:
        print(f"wrote {path} and {path.with_suffix('.csv').name}", flush=True)
    return path
