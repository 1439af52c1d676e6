"""``effdetseg data download``: official archives, MD5-checked, resumable (HTTP Range), extracted in place.

The archive table is plain data (``ARCHIVES``) and ``download_dataset`` takes another one, so
tests can point it at a local server.
"""
from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffdetsegError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    filename: str


ARCHIVES: dict[str, tuple[Archive, ...]] = {
    # PASCAL VOC 2012 trainval: extracts to VOCdevkit/VOC2012.
    "voc": (
        Archive(
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "6cd6e144f989b92b3379bac3b3de84fd",
            "VOCtrainval_11-May-2012.tar",
        ),
    ),
    # SBD (Hariharan et al.): extracts to benchmark_RELEASE/dataset/{cls,img,...}.
    "sbd": (
        Archive(
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
            "82b4d87ceb2ed10f6038a1cba92111cb",
            "benchmark.tgz",
        ),
    ),
    # COCO 2017: extracts to train2017/, val2017/, annotations/.
    "coco": (
        Archive("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "train2017.zip"),
        Archive("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "val2017.zip"),
        Archive(
            "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
            "f4bbac642086de4f52a3fdda2de5fa2c",
            "annotations_trainval2017.zip",
        ),
    ),
}


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(archive: Archive, directory: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``archive`` into ``directory`` (resuming ``<name>.part``) and verify its MD5."""
    from tqdm import tqdm

    target = directory / archive.filename
    if target.is_file():
        if file_md5(target) == archive.md5:
            log.info("%s: already downloaded, checksum OK", target)
            return target
        target.unlink()  # a complete-looking file with the wrong content: fetch it again
    part = directory / f"{archive.filename}.part"
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:  # the server ignored Range: start over
                log.info("%s: server does not resume, downloading from the start", archive.url)
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=archive.filename, disable=not progress
            ) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the .part file is already complete
            pass
        else:
            raise EffdetsegError(f"{archive.url}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError) as e:
        raise EffdetsegError(
            f"{archive.url}: download failed ({getattr(e, 'reason', e)}); run the command again to resume from {part}"
        ) from None

    got = file_md5(part)
    if got != archive.md5:
        part.unlink()
        raise EffdetsegError(f"{archive.url}: checksum mismatch (MD5 {got}, expected {archive.md5}); the download was removed")
    part.replace(target)
    return target


def _inside(directory: Path, member: str) -> bool:
    return (directory / member).resolve().is_relative_to(directory.resolve())


def extract(archive_path: Path, directory: Path) -> None:
    """Extract a .tar/.tgz/.tar.gz/.zip archive under ``directory``, refusing paths that escape it."""
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as tar:
            bad = [m.name for m in tar.getmembers() if not _inside(directory, m.name)]
            if bad:
                raise EffdetsegError(f"{archive_path}: refusing to extract paths outside {directory}: {bad[:3]}")
            tar.extractall(directory, filter="data")
    elif zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf:
            bad = [n for n in zf.namelist() if not _inside(directory, n)]
            if bad:
                raise EffdetsegError(f"{archive_path}: refusing to extract paths outside {directory}: {bad[:3]}")
            zf.extractall(directory)
    else:
        raise EffdetsegError(f"{archive_path}: not a tar or zip archive")


def download_dataset(
    name: str,
    root: str | Path,
    *,
    extract_archives: bool = True,
    keep_archive: bool = False,
    archives: Mapping[str, Sequence[Archive]] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Download (and extract) every archive of ``name`` under ``root``; returns the archives or extracted dirs."""
    table = ARCHIVES if archives is None else archives
    if name not in table:
        raise EffdetsegError(f"unknown dataset {name!r} to download; choose from {', '.join(sorted(table))}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for archive in table[name]:
        marker = root / f".{archive.filename}.extracted"
        if extract_archives and marker.is_file():
            log.info("%s: already extracted under %s", archive.filename, root)
            results.append(root)
            continue
        path = fetch(archive, root, progress=progress)
        if not extract_archives:
            results.append(path)
            continue
        log.info("extracting %s under %s", path.name, root)
        extract(path, root)
        marker.write_text(archive.md5 + "\n")
        if not keep_archive:
            path.unlink()
        results.append(root)
    return results
