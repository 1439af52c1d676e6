"""The README's training commands, read from the README itself, so that a benchmark runs exactly the
command a user copies (only the data root, the experiment folder and the overrides a measurement
adds are changed).

A command is the shell lines under a comment line of the README's "Recipes" block that starts with
the given marker, joined across trailing backslashes; it is run by bash, so ``$(python -c …)`` in it
works as in a terminal (``python`` is this interpreter).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CAMVID = (REPO / ".." / "shared" / "data" / "camvid").resolve()
CAMVID_MARKER = "# CamVid"


def readme_command(marker: str, readme: Path = REPO / "README.md") -> str:
    """The first ``effdetseg train`` command after the comment line starting with ``marker``."""
    lines = readme.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(marker):
            command, j = "", i + 1
            while j < len(lines):
                text = lines[j].split("   #")[0].rstrip()  # a trailing comment after the command
                command += text.rstrip("\\").strip() + " "
                if not text.endswith("\\"):
                    break
                j += 1
            if not command.startswith("effdetseg train"):
                raise SystemExit(f"README.md: the line after {marker!r} is not an `effdetseg train` command")
            return command.strip()
    raise SystemExit(f"README.md: no recipe line starting with {marker!r}")


def camvid_command(experiments_dir: Path, name: str, overrides: list[str], root: Path = SHARED_CAMVID) -> str:
    """The README's CamVid command on ``root``, writing ``experiments_dir/name``, plus ``overrides``."""
    command = readme_command(CAMVID_MARKER)
    command = re.sub(r"data\.root=\S+", f"data.root={shlex.quote(str(root))}", command)
    command = re.sub(r"experiment_name=\S+", f"experiment_name={shlex.quote(name)}", command)
    extra = [f"experiments_dir={shlex.quote(str(experiments_dir))}", "train.progress=false", *map(shlex.quote, overrides)]
    return command + " " + " ".join(extra)


def run_command(command: str, log: Path) -> float:
    """Run ``command`` with bash (``effdetseg`` and ``python`` from this interpreter's environment),
    its output into ``log``; returns the wall-clock seconds. Fails loudly on a non-zero exit."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{command}` failed with exit code {proc.returncode}; see {log}")
    return seconds
