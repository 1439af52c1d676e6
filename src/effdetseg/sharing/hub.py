"""Model folders in the Hugging Face Hub layout: ``save_pretrained``, ``from_pretrained``, push.

A folder holds ``config.json`` (the model record: architecture, classes with names and colours,
preprocessing, provenance), ``model.safetensors`` (the weights) — both written and read by
:mod:`effdetseg.io.model_files`, the one model-file reader — and ``README.md``, the model card generated
from the record (:func:`effdetseg.sharing.card.hub_model_card`), with the per-class IoU plot of the
record's validation metrics and, for a training run's ``best.pth``, the prediction grid training
drew on its validation images. ``Predictor``, ``predict``, ``evaluate`` and ``demo`` take the folder
as ``--checkpoint``.

The record in ``config.json`` is data: the network is rebuilt by name from the zoo, never from
a class path. huggingface_hub's ``ModelHubMixin`` is not used: it rebuilds a model by calling its
class with the arguments stored in ``config.json``, and effdetseg networks are built by
``create_model`` from the record instead. A Hub repo id goes through ``snapshot_download`` (its
cache; ``HF_HUB_OFFLINE=1`` reads the cache only); pushing uses ``create_repo`` + ``upload_folder``.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from torch import nn

from ..errors import EffdetsegError, first_line
from ..inference.predictor import check_segmentation
from ..io.build import load_model
from ..io.files import atomic_write, ensure_output_folder, run_owner
from ..io.labels import LabelSet
from ..io.model_files import FOLDER_RECORD, FOLDER_WEIGHTS, read_model_file, write_model_folder
from ..io.record import ModelRecord, unwrap
from ..pictures.charts import plot_class_iou
from .card import class_ious, hub_model_card

CARD_FILE = "README.md"
CLASS_IOU_PLOT = "per_class_iou.png"
PREDICTION_GRID = "val_grid.png"  # the name training gives it beside best.pth
TRAINING_BEST = "best.pth"
DEFAULT_LICENSE = "other"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def save_pretrained(
    model_or_checkpoint: nn.Module | str | Path,
    folder: str | Path,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    *,
    license: str = DEFAULT_LICENSE,
    token: str | None = None,
) -> Path:
    """Write a model folder (see the module doc) from a built network or an effdetseg checkpoint;
    with ``push_to_hub=True`` upload it to ``repo_id`` (a token is needed: ``token``, ``HF_TOKEN``
    or ``hf auth login``; without one nothing is written and the error says so)."""
    if push_to_hub:
        if not repo_id:
            raise EffdetsegError("push_to_hub needs repo_id (owner/name)")
        token = _token(token)
    record, state_dict, checkpoint = _record_and_weights(model_or_checkpoint)
    check_segmentation(record, checkpoint or "model")
    folder = Path(folder)
    if checkpoint is not None and checkpoint.resolve() == folder.resolve():
        raise EffdetsegError(f"{folder}: the output folder is the checkpoint itself")
    for name in (FOLDER_RECORD, FOLDER_WEIGHTS, CARD_FILE, CLASS_IOU_PLOT, PREDICTION_GRID):
        owner = run_owner(folder / name)  # a training run's folder: its plots would be replaced
        if owner is not None:
            raise EffdetsegError(f"{folder}: {owner} is a training run's folder, whose {name} a model folder would replace; choose another folder")
    ensure_output_folder(folder)
    write_model_folder(folder, record, state_dict)
    labels = record.labels or LabelSet.default_for(record.architecture.num_classes)
    images, notes = {}, []
    ious = class_ious(record, labels)
    if ious is not None:
        miou = (record.provenance.metrics or {}).get("miou")
        title = "per-class IoU (validation)" + (f": mIoU {100 * miou:.2f} %" if miou is not None else "")
        atomic_write(
            folder / CLASS_IOU_PLOT, lambda tmp: plot_class_iou(labels.names, ious, labels.colors, Path(tmp), title), extension=".png"
        )
        images[CLASS_IOU_PLOT] = "per-class IoU on the validation split"
    grid = _prediction_grid(checkpoint)
    if grid is not None and grid.is_file():
        atomic_write(folder / PREDICTION_GRID, lambda tmp: shutil.copyfile(grid, tmp))
        images[PREDICTION_GRID] = "validation images: image, ground truth, prediction"
    else:
        notes.append("No prediction grid: it is drawn from the validation images at the end of training "
                     f"({PREDICTION_GRID} beside {TRAINING_BEST}), and none came with these weights.")
    for stale in {CLASS_IOU_PLOT, PREDICTION_GRID} - set(images):  # left by an earlier save into this folder
        (folder / stale).unlink(missing_ok=True)
    card = hub_model_card(
        record, labels, images, folder=folder.resolve().name, repo_id=repo_id if push_to_hub else None, license=license, notes=notes
    )
    atomic_write(folder / CARD_FILE, lambda tmp: card.save(tmp))
    if push_to_hub:
        push_folder(folder, repo_id, token)
    return folder


def from_pretrained(name_or_path: str | Path, map_location: str = "cpu", *, revision: str | None = None, token: str | None = None) -> nn.Module:
    """The network of a model folder, a model file, or a Hub repo id (``owner/name``), in eval mode."""
    return load_model(resolve_pretrained(name_or_path, revision=revision, token=token), map_location)


def resolve_pretrained(name_or_path: str | Path, *, revision: str | None = None, token: str | None = None) -> Path:
    """A local folder or file as it is; a Hub repo id → its snapshot in huggingface_hub's cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if not _REPO_ID.match(str(name_or_path)):
        raise EffdetsegError(f"{name_or_path}: no such model folder or file, and not a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(
            str(name_or_path), revision=revision, token=token,
            allow_patterns=[FOLDER_RECORD, FOLDER_WEIGHTS, CARD_FILE, "*.png"],
        ))
    except Exception as e:  # offline, unknown repo, no access …: whatever the Hub says, on one line
        raise EffdetsegError(f"{name_or_path}: cannot download from the Hugging Face Hub ({first_line(e, with_type=True)})") from None


def push_folder(folder: Path, repo_id: str, token: str) -> None:
    """Create the model repo if needed and upload the folder in one commit."""
    from huggingface_hub import create_repo, upload_folder

    try:
        create_repo(repo_id, token=token, repo_type="model", exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=folder, token=token, repo_type="model", commit_message="Upload effdetseg model")
    except Exception as e:
        raise EffdetsegError(f"{repo_id}: upload to the Hugging Face Hub failed ({first_line(e, with_type=True)})") from None


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise EffdetsegError("push_to_hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` (nothing was written)")
    return token


def _record_and_weights(source: nn.Module | str | Path) -> tuple[ModelRecord, dict, Path | None]:
    if isinstance(source, nn.Module):
        return ModelRecord.for_model(source), unwrap(source).state_dict(), None
    file = read_model_file(source)
    if file.record is None:
        raise EffdetsegError(f"{file.path}: a bare state dict has no record; load it with --model/--weights (or save_model) first")
    return file.record, file.state_dict, file.path


def _prediction_grid(checkpoint: Path | None) -> Path | None:
    """The grid drawn for these weights: beside a run's best.pth, or in a model folder being re-saved."""
    if checkpoint is None:
        return None
    if checkpoint.is_dir():
        return checkpoint / PREDICTION_GRID
    return checkpoint.with_name(PREDICTION_GRID) if checkpoint.name == TRAINING_BEST else None
