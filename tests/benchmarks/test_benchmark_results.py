"""benchmarks/results_file.py: the JSON and CSV every benchmark writes under benchmarks/results/, and
that every benchmark script writes them. No torch: these run in a fraction of a second."""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import results_file  # noqa: E402

# Modules of benchmarks/ that are helpers, not benchmarks: they write no results of their own.
HELPERS = {"results_file.py", "readme_commands.py"}
INFO = {"date": "2026-12-08T09:30:05+01:00", "cpu": "Test CPU", "commit": "0123abc", "uncommitted_changes": False}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_json_and_csv(tmp_path: Path) -> None:
    rows = [
        {"model": "ours", "ms": 12.345678, "steps": 3, "iou": {"a": 0.123456}, "note": None},
        {"model": "fpn", "ms": 20.0, "steps": 4, "iou": {"a": 0.5}, "ratio": 1 / 3},
    ]
    path = results_file.write_results("bench", rows, info={**INFO, "threads": 2}, extra={"summary": [1]}, results_dir=tmp_path)
    assert path == tmp_path / "bench_20261208-093005.json"
    document = json.loads(path.read_text())
    assert document["results"] == rows  # every detail, unrounded
    assert document["threads"] == 2 and document["summary"] == [1] and document["cpu"] == "Test CPU"
    assert {"cores", "gpu"} <= set(document) and list(document)[-2:] == ["results", "summary"]
    table = read_csv(path.with_suffix(".csv"))
    # date, cpu, commit, then the scalar keys in order of first appearance (iou holds a dict: left out)
    assert list(table[0]) == ["date", "cpu", "commit", "model", "ms", "steps", "note", "ratio"]
    assert table[0] == {"date": INFO["date"], "cpu": "Test CPU", "commit": "0123abc", "model": "ours", "ms": "12.3457",
                        "steps": "3", "note": "", "ratio": ""}
    assert table[1]["ratio"] == "0.3333" and table[1]["ms"] == "20.0"


def test_fields_csv_rows_and_commit_tag(tmp_path: Path) -> None:
    rows = [{"model": "ours", "iou": {"a": 0.123456, "b": None}, "curve": [0.111111, 2], "hidden": 1}]
    info = {**INFO, "uncommitted_changes": True}
    path = results_file.write_results("bench", rows, info=info, results_dir=tmp_path, fields=("model", "iou", "curve"))
    (row,) = read_csv(path.with_suffix(".csv"))
    assert row["commit"] == "0123abc + uncommitted changes"
    assert list(row)[3:] == ["model", "iou", "curve"]  # fields given: only those, dicts and lists as JSON
    assert json.loads(row["iou"]) == {"a": 0.1235, "b": None} and json.loads(row["curve"]) == [0.1111, 2]
    path = results_file.write_results("bench", rows, info=info, results_dir=tmp_path, csv_rows=[{"model": "x", "n": 0.5}])
    assert read_csv(path.with_suffix(".csv"))[0]["model"] == "x"
    assert json.loads(path.read_text())["results"] == rows


def test_machine_info_and_its_date_name_the_files(tmp_path: Path) -> None:
    info = results_file.machine_info()
    assert set(info) == {"date", "cpu", "cores", "gpu", "commit", "uncommitted_changes"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", info["date"])  # ISO with its timezone
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", info["commit"]) and isinstance(info["uncommitted_changes"], bool)
    assert "torch" in sys.modules or info["gpu"] is None  # torch is asked only when already imported
    first = results_file.write_results("twice", [{"a": 1}], info=info, results_dir=tmp_path / "new")
    second = results_file.write_results("twice", [{"a": 1}, {"a": 2}], info=info, results_dir=tmp_path / "new")
    assert first == second and {p.name for p in first.parent.iterdir()} == {first.name, first.with_suffix(".csv").name}
    assert len(read_csv(second.with_suffix(".csv"))) == 2


def test_arguments_and_no_results(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    results_file.add_results_argument(parser)
    defaults = parser.parse_args([])
    assert Path(defaults.results_dir) == BENCHMARKS / "results" and not defaults.no_results
    assert results_file.parameters(defaults) == {"threads": 2}
    args = parser.parse_args(["--results-dir", str(tmp_path), "--no-results"])
    assert results_file.write_results_from_args(args, "bench", [{"a": 1}], info=INFO) is None
    assert list(tmp_path.iterdir()) == []
    args = parser.parse_args(["--results-dir", str(tmp_path)])
    assert results_file.write_results_from_args(args, "bench", [{"a": 1}], info=INFO, quiet=True).is_file()


def test_own_data_keeps_its_columns_and_summary(tmp_path: Path) -> None:
    import own_data  # numpy, no torch

    rows = [{"set": "s", "model": "smp_fpn", "seed": 0, "minutes": 1.0, "miou": 0.5, "iou": {"a": 0.123456, "b": None},
             "steps": 7, "train_s": 59.87654, "loss_curve": [1.0]},
            {"set": "s", "model": "product", "seed": 0, "minutes": 1.0, "miou": None, "error": "failed"}]
    own_data.add_ratios(rows)
    path = own_data.write_results(tmp_path, INFO, rows)
    assert path == own_data.results_file.results_stem("own_data", INFO["date"], tmp_path).with_suffix(".json")
    document = json.loads(path.read_text())
    assert document["results"] == rows and document["summary"] == own_data.summary(rows)
    fpn, product = read_csv(path.with_suffix(".csv"))
    assert tuple(fpn) == own_data.CSV_FIELDS
    assert fpn["per_class_iou"] == "a=0.1235; b=" and fpn["train_s"] == "59.8765" and fpn["miou_ratio"] == "1.0"
    assert product["error"] == "failed" and product["miou"] == ""


def test_quality_csv_has_the_table_columns(tmp_path: Path) -> None:
    import quality  # numpy, no torch

    result = {"model": "smp_fpn", "budget": "steps", "amount": 200, "steps": 200, "train_s": 90.0, "ms_per_step": 450.0,
              "peak_mb": 2000.0, "miou": 0.58, "iou": {"sky": 0.9, "pole": 0.1}, "recipe": {"lr": 0.001, "decoder_lr_scale": 1.0},
              "matrix": [[1, 0], [0, 1]], "loss_curve": [1.0, 0.5], "params_m": 5.1}
    path = results_file.write_results("quality", [result], info=INFO, results_dir=tmp_path, csv_rows=[quality.csv_row(result)])
    (row,) = read_csv(path.with_suffix(".csv"))
    assert list(row)[3:11] == ["model", "budget", "amount", "steps", "ms_per_step", "peak_mb", "miou", "iou_sky"]
    assert row["lr"] == "0.001" and "matrix" not in row and json.loads(path.read_text())["results"] == [result]


def test_every_benchmark_writes_results_files() -> None:
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)
    assert len(scripts) >= 9
    silent = [p.name for p in scripts if "write_results" not in p.read_text()]
    assert not silent, f"benchmarks that write no results files (call results_file.write_results): {silent}"
