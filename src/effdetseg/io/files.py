"""Files written whole or not at all, output folders checked before any work, and folder locks.

Every file effdetseg writes (checkpoints, exported models, prepared masks, configs, metrics) goes
through ``atomic_write``: the content is written to a temporary file in the same folder, flushed
to disk and renamed over the target, so a crash or a kill at any moment leaves either the old
file or the new one, never half of one. A write that fails (a full disk, a read-only folder) is one
error naming the file and the cause. The temporary files a kill leaves behind (``.NAME.*.tmp``)
are removed by ``remove_orphaned_temporaries`` when the folder's next run starts.

``FolderLock`` makes a folder the property of one process while it writes there (an experiment
folder during training): an ``fcntl`` lock on ``.lock`` holding the owner's PID. The kernel drops
the lock when its process dies, however it dies, so a lock file left by a dead process is simply
taken over.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EffdetsegError, first_line


def atomic_write(path: str | Path, write: Callable[[str], Any], extension: str = "") -> None:
    """Call ``write(tmp_path)``, then rename onto ``path`` (atomic on one filesystem). ``extension``
    ends the temporary name, for writers that pick the format from it (e.g. ``.png``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX + extension, dir=path.parent)
    except OSError as e:
        raise write_error(path, e, replaced=True) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(path.parent)  # measured before the partial file is removed
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, EffdetsegError):
            raise
        if isinstance(e, OSError) or full or "No space left" in str(e):
            raise write_error(path, e, disk_full=full, replaced=True) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_error(path: str | Path, error: BaseException, disk_full: bool = False, replaced: bool = False) -> EffdetsegError:
    """One line for a failed write: the file and the cause (``No space left on device``, ``Permission denied`` …).

    Writers such as ``torch.save`` turn the OS error of a full disk into their own (``unexpected
    pos …``); ``disk_full`` (the folder had no space left when the write failed) names the cause then.
    ``replaced``: the write was to replace the file whole (``atomic_write``), so any old one is intact."""
    if isinstance(error, OSError) and error.errno is not None:
        cause = os.strerror(error.errno)
    elif disk_full or "No space left" in str(error):
        cause = os.strerror(errno.ENOSPC)
    else:
        cause = first_line(error)
    return EffdetsegError(f"{path}: cannot write ({cause})" + ("; any earlier version of the file is unchanged" if replaced else ""))


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMPORARY_SUFFIX = ".tmp"


def remove_orphaned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of ``atomic_write`` that a killed process left in ``folder``.
    Call it only while holding the folder (``FolderLock``): a running writer's file looks the same."""
    removed = []
    for path in sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class FolderLock:
    """``with FolderLock(folder):`` — this process alone writes ``folder``; a second process is
    refused with one line naming the owner's PID. See the module doc for stale locks."""

    NAME = ".lock"

    def __init__(self, folder: Path, what: str = "folder") -> None:
        self.path = Path(folder) / self.NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise EffdetsegError(f"{self.path}: cannot create the lock file ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise EffdetsegError(
                    f"{self.path.parent}: {self.what} is in use by another run (PID {owner}); wait for it to finish or stop it"
                ) from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the owner released (and removed) this file between our open and lock: again
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: no one holds a lock on a removed name
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_output_folder(folder: Path) -> None:
    """Fail before any work when ``folder`` could not be created or written; creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EffdetsegError(f"{folder}: cannot create output folder ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EffdetsegError(f"{folder}: output folder is not writable")


def ensure_output_folder(folder: Path) -> None:
    """Create ``folder``, failing before any work when it cannot be created or written."""
    check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EffdetsegError(f"{folder}: cannot create output folder ({e.strerror})") from None


# ----------------------------------------------------------------------------- files outputs never replace

# What a training run keeps in its experiment folder (engine/experiment.py, engine/checkpoints.py,
# engine/plots.py): an export, a prediction or a benchmark written over one of them would destroy
# the run (a TorchScript file over last.pth ends every resume).
RUN_FILES = ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "train.log", "curves.png", "per_class_iou.png",
             "val_grid.png", ".lock")
RUN_FOLDERS = ("tensorboard",)
_RUN_MARKERS = ("last.pth", "best.pth", "metrics.jsonl", "train.log")
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save without the zip format


def is_experiment_folder(folder: Path) -> bool:
    """A training run's folder: its config.yaml beside a checkpoint or a log of the run."""
    return (folder / "config.yaml").is_file() and any((folder / name).exists() for name in _RUN_MARKERS)


def run_owner(path: Path) -> Path | None:
    """The experiment folder ``path`` belongs to as one of the run's files (None: it is not one)."""
    if path.name in RUN_FILES and is_experiment_folder(path.parent):
        return path.parent
    for parent in path.parents:
        if parent.name in RUN_FOLDERS and is_experiment_folder(parent.parent):
            return parent.parent
    return None


def holds_weights(path: Path) -> bool:
    """Whether the file is a checkpoint or weights file (torch.save or safetensors) — not an
    exported TorchScript, ONNX or OpenVINO file, which an export may write again."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return True
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:  # safetensors header
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
        torchscript = any("/code/" in name for name in names)
        return not torchscript and any(name.endswith("/data.pkl") or name == "data.pkl" for name in names)
    return False


def check_replaceable(path: str | Path, what: str = "--output") -> None:
    """Refuse, in one line naming it, an output that would replace a training run's file or an
    existing checkpoint (either path of a symbolic link counts)."""
    path = Path(path)
    for candidate in dict.fromkeys([path, path.resolve()]):
        owner = run_owner(candidate)
        if owner is not None:
            raise EffdetsegError(
                f"{path}: {what} would replace {candidate.name} of the training run in {owner}; choose another {what}"
            )
        if candidate.is_file() and holds_weights(candidate):
            raise EffdetsegError(f"{path}: {what} would replace a checkpoint (model weights); choose another {what}")
