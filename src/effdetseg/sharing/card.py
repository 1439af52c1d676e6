"""Model cards: what a model record says, as markdown.

- :func:`record_summary`: the tables — architecture overrides, parameters and GMACs at the
  training size (counted on the meta device as ``effdetseg models`` counts them), input and
  normalization, provenance, the validation metrics and the per-class table. The demo's card tab
  shows it for a checkpoint without a ``README.md``.
- :func:`hub_model_card`: the ``README.md`` of a model folder (``save_pretrained``): the Hub's
  YAML metadata (``ModelCardData``: licence, library, tags, the mIoU as a model-index result), the
  summary, the training command and config, the plots written beside it, intended use and limitations.
Nothing is invented: a number the record does not hold is not in the card, and the card says so.
"""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..io.labels import LabelSet
from ..io.record import DEFAULT_INPUT_SIZE, ModelRecord, Preprocessing
from ..models.complexity import count_macs, count_parameters

LIBRARY_NAME = "effdetseg"
CARD_TAGS = ("semantic-segmentation", "efficientdet", "bifpn", "pytorch", "effdetseg")


def record_summary(
    title: str,
    source: str,
    num_classes: int,
    preprocessing: Preprocessing,
    labels: LabelSet,
    record: ModelRecord | None,
) -> str:
    """The card's tables: ``source`` names the weights (e.g. ``best.pth`` (torch)); ``labels`` are
    the classes shown; ``record`` (None for an exported file without one) gives the rest."""
    rows = [("checkpoint", source), ("classes", str(num_classes))]
    if record is not None:
        rows += [(key.replace("_", " "), f"`{value}`") for key, value in record.architecture.overrides.items()]
        height, width = preprocessing.size or DEFAULT_INPUT_SIZE
        with torch.device("meta"):  # counted as `effdetseg models` counts them: shapes only
            network = record.architecture.build(source)
        rows += [("parameters", f"{count_parameters(network) / 1e6:.2f} M"),
                 (f"GMACs at {height}×{width}", f"{count_macs(network, (height, width)) / 1e9:.2f}")]
    rows += [("input", preprocessing.describe()), ("normalization", f"mean {_floats(preprocessing.mean)}, std {_floats(preprocessing.std)}")]
    provenance = record.provenance if record is not None else None
    if provenance is not None:
        rows += [(key, str(value)) for key, value in
                 (("training data", provenance.data), ("epoch", provenance.epoch), ("weights", provenance.weights)) if value is not None]
    metrics = (provenance.metrics if provenance is not None else None) or {}
    per_class = metrics.get("per_class") or {}
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    if metrics:
        lines += ["", "## Validation", "", "| metric | value |", "|---|---|"]
        for key, label in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"), ("mean_class_accuracy", "mean class accuracy")):
            if metrics.get(key) is not None:
                lines.append(f"| {label} | {100 * metrics[key]:.2f} % |")
    lines += ["", "## Classes", "", "| id | name | colour |" + (" IoU |" if per_class else ""),
              "|---|---|---|" + ("---|" if per_class else "")]
    for i, (name, color) in enumerate(zip(labels.names, labels.colors)):
        iou = (per_class.get(name) or {}).get("iou")
        cell = (" – |" if iou is None else f" {100 * iou:.2f} % |") if per_class else ""
        lines.append(f"| {i} | {name} | #{''.join(f'{c:02x}' for c in color)} |{cell}")
    return "\n".join(lines) + "\n"


def class_ious(record: ModelRecord, labels: LabelSet) -> list[float] | None:
    """The per-class IoU of the record's validation metrics in class order (NaN: never seen), or None."""
    metrics = record.provenance.metrics or {}
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        return None
    values = [(per_class.get(name) or {}).get("iou") for name in labels.names]
    return [float("nan") if value is None else float(value) for value in values]


def hub_model_card(
    record: ModelRecord,
    labels: LabelSet,
    images: Mapping[str, str],
    *,
    folder: str,
    repo_id: str | None = None,
    license: str = "other",
    notes: Sequence[str] = (),
) -> Any:
    """The ``huggingface_hub.ModelCard`` of a model folder. ``images``: file name → caption of
    the pictures written beside the card (the per-class IoU plot, the prediction grid);
    ``folder`` (its name) and ``repo_id`` (when pushed): what its usage examples load; ``notes``:
    what the folder lacks and why."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = record.architecture.name
    provenance = record.provenance
    metrics = provenance.metrics or {}
    eval_results = None
    if metrics.get("miou") is not None:
        eval_results = [EvalResult(
            task_type="image-segmentation", dataset_type=provenance.data or "unknown", dataset_name=provenance.data or "unknown",
            dataset_split="val", metric_type="mean_iou", metric_name="mIoU", metric_value=round(100 * metrics["miou"], 2),
        )]
    data = ModelCardData(
        license=license, library_name=LIBRARY_NAME, pipeline_tag="image-segmentation", tags=list(CARD_TAGS),
        model_name=name, eval_results=eval_results,
    )
    summary = record_summary(name, "`model.safetensors`", record.architecture.num_classes, record.preprocessing, labels, record)
    body = [summary, *_use_section(name, folder, repo_id), *_training_section(provenance, metrics, images, notes), *_limitations_section(metrics, license)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def _use_section(name: str, folder: str, repo_id: str | None) -> list[str]:
    python = ["```python", "import effdetseg", ""]
    shell = ["```bash"]
    if repo_id is not None:
        python += [f"model = effdetseg.from_pretrained({repo_id!r})  # downloaded into the Hugging Face cache", ""]
        shell += [f"hf download {repo_id} --local-dir {shlex.quote(folder)}"]
    python += [f"model = effdetseg.from_pretrained({folder!r})  # rebuilt by name from config.json, weights from model.safetensors",
               f"labels = effdetseg.Predictor({folder!r}).predict('photo.jpg')  # H×W class ids at the photo's size", "```", ""]
    shell += [f"effdetseg predict --checkpoint {shlex.quote(folder)} --data photo.jpg --output masks/",
              f"effdetseg demo --checkpoint {shlex.quote(folder)}", "```", ""]
    return [
        "## How to use", "", *python, *shell,
        f"`config.json` is the model record (architecture `{name}`, classes with names and colours, preprocessing, "
        "provenance); it is read as data, never executed.", "",
    ]


def _training_section(provenance: Any, metrics: Mapping[str, Any], images: Mapping[str, str], notes: Sequence[str]) -> list[str]:
    lines = ["## Training", ""]
    if provenance.data is not None:
        lines += [f"Data preset: `{provenance.data}`" + (f", epoch {provenance.epoch}" if provenance.epoch is not None else "")
                  + (f", {provenance.weights} weights" if provenance.weights else "") + ".", ""]
    if provenance.command:
        lines += ["Command:", "", "```bash", shlex.join(provenance.command), "```", ""]
    if provenance.config:
        from omegaconf import OmegaConf

        lines += ["Resolved training config:", "", "```yaml", OmegaConf.to_yaml(OmegaConf.create(dict(provenance.config))).rstrip(), "```", ""]
    if provenance.data is None and not provenance.command and not provenance.config:
        lines += ["The checkpoint records no training run (data, command or config).", ""]
    if not metrics:
        lines += ["No validation metrics: the checkpoint holds none, and none are made up here.", ""]
    for file, caption in images.items():
        lines += [f"![{caption}]({file})", ""]
    for note in notes:
        lines += [note, ""]
    return lines


def _limitations_section(metrics: Mapping[str, Any], license: str) -> list[str]:
    if metrics:
        numbers = ("The validation numbers above were measured on the validation split of the data preset, single scale, "
                   "through the inference path `effdetseg evaluate` and `predict` use; ")
    else:
        numbers = "This card holds no accuracy numbers; "
    return [
        "## Intended use and limitations", "",
        "Semantic segmentation of images like those it was trained on: one class per pixel, from the classes above. "
        + numbers + "expect lower accuracy on other cameras, scenes and image sizes, and measure it on your own data "
        "(`effdetseg evaluate`) before relying on it. It is not meant for decisions about people or for safety-critical use.", "",
        f"Licence: `{license}`. The weights' terms also depend on the training data's licence.", "",
    ]


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
