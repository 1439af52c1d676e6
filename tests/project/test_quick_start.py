"""The README's quick start runs as written: its command lines (the training line made short by a
few overrides appended, the demo server left out) and its Python lines, in a fresh folder."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import REPO

SHORT_TRAINING = ["data.train_samples=16", "data.val_samples=4", "train.num_epochs=1", "train.progress=false"]


def quick_start_blocks() -> tuple[list[str], str]:
    """(the shell lines, the Python block) of the README's "Quick start" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() for line in shell.splitlines()]
    return [line for line in lines if line], python


def test_the_quick_start_lines_are_what_the_test_runs() -> None:
    shell, python = quick_start_blocks()
    assert [shlex.split(line)[:2] for line in shell] == [
        ["effdetseg", "train"], ["effdetseg", "evaluate"], ["effdetseg", "predict"], ["effdetseg", "export"], ["effdetseg", "demo"]]
    assert "Predictor(" in python and "create_model(" in python


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    shell, python = quick_start_blocks()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    bin_dir = Path(sys.executable).parent

    def run(argv: list[str]) -> None:
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    for line in shell:
        argv = shlex.split(line)
        if argv[1] == "demo":  # a server: its checkpoint is the one the lines above used
            continue
        argv[0] = str(bin_dir / "effdetseg")
        run(argv + SHORT_TRAINING if argv[1] == "train" else argv)
    assert (tmp_path / "experiments" / "shapes" / "best.pth").is_file()
    assert (tmp_path / "masks").is_dir() and any((tmp_path / "masks").iterdir())
    assert (tmp_path / "shapes.onnx").is_file()

    script = python + "\nassert labels.shape == (96, 128), labels.shape\n"
    run([sys.executable, "-c", script])
    assert (tmp_path / "model.safetensors").is_file()
