"""The README stays short and its links resolve; the docs site builds with `mkdocs build --strict`,
so a broken link or anchor, or an API object that moved, fails the run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
CI_MARKER = "# tests (CI runs this line verbatim)"


def test_readme_is_at_most_300_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the detail into docs/ (see docs/contributing.md)"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_resolve() -> None:
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are not links
    anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert links, "README.md has no links into the docs"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        if path:
            assert (REPO / path).exists(), f"README.md links to {link}, which does not exist"
        elif anchor:
            assert anchor in anchors, f"README.md links to #{anchor}, which is no heading of README.md"


def test_readme_keeps_the_lines_ci_and_the_benchmarks_read() -> None:
    """.ci/run runs the line after the CI marker; benchmarks/quality.py and trainer_overhead.py run
    the CamVid command of the Recipes block."""
    lines = README.read_text().splitlines()
    assert CI_MARKER in lines
    assert lines[lines.index(CI_MARKER) + 1].startswith("python3 -m venv .venv")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from readme_commands import CAMVID_MARKER, readme_command
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    command = readme_command(CAMVID_MARKER, README)
    assert "data=camvid" in command and "train.max_minutes=" in command


@pytest.mark.slow
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: any warning (broken link or anchor, page left out of the nav, an API
    object mkdocstrings cannot find) aborts the build; the generated reference pages are built too."""
    import importlib.util

    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if importlib.util.find_spec(m.split(".")[0]) is None]
    assert not missing, f"{missing} not installed: the test extra includes the docs extra (pip install -e '.[test]')"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "effdetseg data download" in cli and "--checkpoint" in cli  # generated from the parsers
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "train.max_minutes" in config and "data.mask_format" in config  # generated from the schema
    assert "efficientdet_d7_seg_p2" in (site / "guide" / "models" / "index.html").read_text()  # the zoo table


def test_a_results_block_shows_the_newest_file_of_a_benchmark(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from gen_results import results_table
    finally:
        sys.path.remove(str(REPO / "docs"))
    header = "date,cpu,commit,set,model,miou,per_class_iou,error_ratio\n"
    (tmp_path / "own_data_20260101-000000.csv").write_text(header + "2026-01-01T00:00:00,CPU,aaaaaaaaa,old,fpn,0.5,a=0.5,1.0\n")
    (tmp_path / "own_data_20260202-000000.csv").write_text(header + "2026-02-02T00:00:00,CPU,bbbbbbbbb,new,product,0.7564,a=0.9813; b=0.5314,0.7958\n")
    (tmp_path / "own_data_extra_20270101-000000.csv").write_text(header)  # another benchmark's name
    table = results_table(["own_data"], ["set", "miou%", "per_class_iou%", "error_ratio"], tmp_path)
    assert "own_data_20260202-000000.csv" in table and "commit `bbbbbbb`" in table
    assert "| new | 75.6 | a=98.1; b=53.1 | 0.7958 |" in table and "old" not in table
    both = results_table(["own_data_20260101-000000", "own_data"], [], tmp_path)
    assert "| old | fpn |" in both and "| new | product |" in both and "CPU" not in both.split(":\n")[1]
    with pytest.raises(FileNotFoundError, match="latency"):
        results_table(["latency"], [], tmp_path)
    with pytest.raises(KeyError, match="steps"):
        results_table(["own_data"], ["steps"], tmp_path)
