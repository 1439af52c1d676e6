"""Files written whole or not at all, and output folders checked before any work.

Every file effdetseg writes (checkpoints, exported models, prepared masks, configs, metrics) goes
through ``atomic_write``: the content is written to a temporary file in the same folder, flushed
to disk and renamed over the target, so a crash or a kill at any moment leaves either the old
file or the new one, never half of one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EffdetsegError


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path`` (atomic on one filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_output_folder(folder: Path) -> None:
    """Create ``folder`` and fail before any work when it cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EffdetsegError(f"{folder}: cannot create output folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise EffdetsegError(f"{folder}: output folder is not writable")
