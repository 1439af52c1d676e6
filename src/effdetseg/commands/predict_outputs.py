"""Where ``effdetseg predict`` writes: three files per image, never over an input, never two
images onto the same file, never over an earlier run's file without ``--overwrite``.

Names are ``<stem>_mask.png``, ``<stem>_overlay.jpg`` and ``<stem>_labels.png`` in the output
folder, which mirrors the images' folders below their common root. When those names would hit an
input file or another image's files (``a.jpg`` and ``a.png``; ``dog.jpg`` beside an input named
``dog_mask.png`` with the output folder equal to the input folder), the image's extension joins
its stem (``a_jpg_mask.png``, ``a_png_mask.png``), then a counter (``a_jpg-2_mask.png``) if that
still collides; every renaming is reported. A single image may name its color-mask file instead.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.image_io import IMAGE_EXTENSIONS
from ..errors import EffdetsegError
from ..io.files import check_output_folder


@dataclass(frozen=True)
class OutputPaths:
    mask: Path
    overlay: Path
    labels: Path

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return (self.mask, self.overlay, self.labels)


@dataclass(frozen=True)
class OutputPlan:
    """One ``OutputPaths`` per image, in the images' order, and a line per renamed image."""

    paths: list[OutputPaths]
    notes: list[str]


def _key(path: Path) -> str:
    """The identity of a file for collisions: its absolute path with links resolved."""
    return os.path.normcase(os.path.realpath(path))


def _named(folder: Path, stem: str) -> OutputPaths:
    return OutputPaths(folder / f"{stem}_mask.png", folder / f"{stem}_overlay.jpg", folder / f"{stem}_labels.png")


def plan_outputs(images: list[Path], output: Path, overwrite: bool = False) -> OutputPlan:
    """The files each image's results go to (see the module doc); refuses, before any work, an
    output that is an input, and (without ``overwrite``) one that exists already."""
    inputs = {_key(image) for image in images}
    if output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir():
        if len(images) != 1:
            raise EffdetsegError(f"{output}: an image file name, but --data gives {len(images)} images; pass a folder")
        stem = output.with_suffix("")
        plan = OutputPlan([OutputPaths(output, Path(f"{stem}_overlay{output.suffix}"), Path(f"{stem}_labels.png"))], [])
        for path in plan.paths[0].files:
            if _key(path) in inputs:
                raise EffdetsegError(f"{path}: is the input image; predict never writes over its input (choose another --output)")
    else:
        plan = _plan_folder(images, output, inputs)
    _check_writable(plan, overwrite)
    return plan


def _plan_folder(images: list[Path], output: Path, inputs: set[str]) -> OutputPlan:
    root = Path(os.path.commonpath([str(p.parent.resolve()) for p in images]))
    folders = [output / image.parent.resolve().relative_to(root) for image in images]
    stems = [image.stem for image in images]
    notes: list[str] = []
    for round_ in range(len(images) + 1):
        plans = [_named(folder, stem) for folder, stem in zip(folders, stems)]
        taken = Counter(_key(path) for plan in plans for path in plan.files)
        clashes = [
            i for i, plan in enumerate(plans) if any(taken[_key(p)] > 1 or _key(p) in inputs for p in plan.files)
        ]
        if not clashes:
            return OutputPlan(plans, notes)
        for i in clashes:
            image = images[i]
            if round_ == 0:
                stems[i] = f"{image.stem}_{image.suffix.lstrip('.').lower()}"
                why = "its names would overwrite an input or another image's files"
            else:
                stems[i] = f"{image.stem}_{image.suffix.lstrip('.').lower()}-{round_ + 1}"
                why = "its names still collided"
            notes.append(f"{image}: {why}; writing {stems[i]}_mask.png, {stems[i]}_overlay.jpg, {stems[i]}_labels.png")
    raise EffdetsegError(f"{output}: could not give every image its own output names")  # unreachable in practice


def _check_writable(plan: OutputPlan, overwrite: bool) -> None:
    """Fail before any work: an output folder that cannot be made or written, an output that is a
    folder, or (without ``overwrite``) files an earlier run left."""
    for folder in sorted({p.mask.parent for p in plan.paths}):
        check_output_folder(folder)
    existing = [path for paths in plan.paths for path in paths.files if path.exists() or path.is_symlink()]
    for path in existing:
        if path.is_dir():
            raise EffdetsegError(f"{path}: output path is a folder")
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more output file(s))" if len(existing) > 1 else ""
        raise EffdetsegError(f"{existing[0]}: exists already{more}; pass --overwrite to replace, or choose another --output")
