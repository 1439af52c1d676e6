"""Output folders shared by the commands that write files."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import EffdetsegError


def ensure_output_folder(folder: Path) -> None:
    """Create ``folder`` and fail before any work when it cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EffdetsegError(f"{folder}: cannot create output folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise EffdetsegError(f"{folder}: output folder is not writable")
