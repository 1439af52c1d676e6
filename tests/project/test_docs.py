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
