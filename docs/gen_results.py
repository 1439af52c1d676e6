"""mkdocs hook: benchmark tables read from the results files under ``benchmarks/results/``, so that a
page shows what a benchmark wrote, never a table typed by hand.

A page asks for a table with a block::

    <!-- results:FILES:COLUMNS:start -->
    (placeholder line)
    <!-- results:end -->

``FILES`` is a comma-separated list of file stems (``own_data_20261207-220725``) or benchmark names
(``latency``: that benchmark's newest file); ``COLUMNS`` the CSV columns to show, in order
(``set,model,miou%``; a ``%`` after a column shows its fractions as percentages, in text too, as
in ``per_class_iou%``; empty: every column but the date, CPU and commit, which the caption gives).
Each file's rows become rows of one table, under a caption naming the files with their date, CPU
and commit. A file that is not there fails the build (``mkdocs build --strict`` runs in the tests).

Registered in ``mkdocs.yml`` under ``hooks:``.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
BLOCK = re.compile(r"<!-- results:([\w.,-]+):([\w,%]*):start -->.*?<!-- results:end -->", re.S)
FRACTION = re.compile(r"(?<![\w.])[01]\.\d+")
CAPTION_COLUMNS = ("date", "cpu", "commit")


def results_file(name: str, folder: Path = RESULTS) -> Path:
    """The CSV a stem names, or the newest CSV of the benchmark ``name``."""
    exact = folder / f"{name}.csv"
    if exact.exists():
        return exact
    found = sorted(p for p in folder.glob(f"{name}_*.csv") if re.fullmatch(rf"{re.escape(name)}_\d{{8}}-\d{{6}}", p.stem))
    if not found:
        raise FileNotFoundError(f"benchmarks/results/ holds no results file for {name!r}: run the benchmark (docs/benchmarks.md lists its command)")
    return found[-1]


def _cell(value: str, percent: bool) -> str:
    if percent:
        value = FRACTION.sub(lambda m: f"{100 * float(m.group()):.1f}", value)
    return value.replace("|", "\\|")


def results_table(names: list[str], columns: list[str], folder: Path = RESULTS) -> str:
    files = [results_file(name, folder) for name in names]
    rows: list[dict[str, str]] = []
    captions = []
    for path in files:
        with path.open(newline="") as f:
            file_rows = list(csv.DictReader(f))
        if not file_rows:
            raise ValueError(f"{path.name} holds no rows")
        first = file_rows[0]
        captions.append(f"`{path.name}` ({first.get('date', '?')[:16].replace('T', ' ')}, {first.get('cpu', '?')}, "
                        f"commit `{first.get('commit', '?')[:7]}`)")
        rows += file_rows
    shown = columns or [c for c in rows[0] if c not in CAPTION_COLUMNS]
    percent = {c.rstrip("%"): c.endswith("%") for c in shown}
    shown = list(percent)
    missing = [c for c in shown if c not in rows[0]]
    if missing:
        raise KeyError(f"{files[0].name} has no column(s) {missing}; it has {list(rows[0])}")
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(row.get(c) or "", percent[c]) for c in shown) + " |" for row in rows]
    return "From " + "; ".join(captions) + ":\n\n" + "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill every results block of a page with the table its files hold now."""
    def fill(match: re.Match[str]) -> str:
        names = [n for n in match.group(1).split(",") if n]
        columns = [c for c in match.group(2).split(",") if c]
        return results_table(names, columns)

    return BLOCK.sub(fill, markdown)
