"""Real images for INT8: where they come from, which of them calibrate, which are held out, and how
well an INT8 file agrees with the checkpoint on those.

Where the images come from (:func:`open_image_source`): a folder of images, or a data preset
(``camvid``, ``voc``, …) whose train split is read through the data layer. :func:`split_images`
picks the calibration images evenly over the source and holds out others for checking, where
:func:`label_agreement` counts the pixels the INT8 file labels as the checkpoint does. Both
quantizers (:mod:`effdetseg.export.quantize_onnx`, :mod:`effdetseg.export.quantize_openvino`)
calibrate on an :class:`ImageSource`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..configs.compose import compose, group_options, load_yaml
from ..data import build_dataset
from ..data.image_io import IMAGE_EXTENSIONS, image_files, read_image
from ..errors import EffdetsegError
from ..inference.predictor import Predictor


@dataclass(frozen=True)
class ImageSource:
    """Real images to calibrate and check with: ``count`` of them, read one at a time by ``load``."""

    description: str
    names: tuple[str, ...]
    load: Callable[[int], np.ndarray]
    skipped: tuple[str, ...] = ()  # "name: why" of the files of a folder that are not readable images

    @property
    def count(self) -> int:
        return len(self.names)


def open_image_source(spec: str, data_root: str | Path | None = None, experiment_config: Path | None = None) -> ImageSource:
    """``spec`` is a folder of images, or the name of a data preset whose train split is used:
    the experiment's own data config when ``experiment_config`` (its config.yaml) trained on that
    preset, else the package preset; ``data_root`` sets its ``data.root``. Anything else is one
    clear error."""
    path = Path(spec).expanduser()
    if path.is_dir():
        candidates = image_files(path)
        if not candidates:
            raise EffdetsegError(f"--calibration {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        files, skipped = readable_images(candidates)
        if not files:
            raise EffdetsegError(f"--calibration {spec}: none of its {len(candidates)} image files is readable ({skipped[0]})")
        return ImageSource(f"folder {path}", tuple(p.name for p in files), lambda i: read_image(files[i]), tuple(skipped))
    presets = group_options()["data"]
    if spec not in presets:
        if path.exists():
            raise EffdetsegError(f"--calibration {spec}: not a folder of images")
        if "/" in spec or "\\" in spec or path.suffix:
            raise EffdetsegError(f"--calibration {spec}: folder not found")
        raise EffdetsegError(
            f"--calibration {spec}: neither an image folder nor a data preset (presets: {', '.join(presets)})"
        )
    return _preset_source(spec, data_root, experiment_config)


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The rule for a folder of calibration images: a file whose name says image but whose header
    no image decoder recognises (or that cannot be opened) is skipped and named — ``"x.jpg: not an
    image (unrecognised format)"`` — rather than counted; only the header is read here, a file
    truncated further on fails later, naming itself."""
    readable, skipped = [], []
    for file in files:
        try:
            with Image.open(file):
                pass
        except UnidentifiedImageError:
            skipped.append(f"{file.name}: not an image (unrecognised format)")
            continue
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append(f"{file.name}: unreadable ({e})")
            continue
        readable.append(file)
    return readable, skipped


def _preset_source(preset: str, data_root: str | Path | None, experiment_config: Path | None) -> ImageSource:
    overrides = [f"data.root={data_root}"] if data_root is not None else []
    if experiment_config is not None and experiment_config.is_file() and (load_yaml(experiment_config).get("data") or {}).get("name") == preset:
        data_cfg = compose(overrides, base=experiment_config, section="data").data
    else:
        data_cfg = compose([f"data={preset}", *overrides], section="data").data
    if data_cfg.get("root") is None and data_cfg.get("format", preset) != "synthetic":
        raise EffdetsegError(f"--calibration {preset}: where are its files? give the preset's data.root with --data-root PATH")
    dataset = build_dataset(data_cfg, "train", augment=False, normalize=False)  # errors name data.root and the files it lacks
    names = tuple(dataset.sample_id(i) for i in range(len(dataset)))
    if not names:
        raise EffdetsegError(f"--calibration {preset}: the train split has no images")
    return ImageSource(f"data={preset} train split", names, lambda i: dataset.load(i)[0])


def evenly_spaced(candidates: Sequence[int], count: int) -> list[int]:
    """``count`` of ``candidates`` spread evenly over them (all of them when there are fewer)."""
    if count >= len(candidates):
        return list(candidates)
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, count).round().astype(int)]


def split_images(total: int, calibration: int, held_out: int) -> tuple[list[int], list[int]]:
    """Indices of the calibration images and of up to ``held_out`` others, both spread over the
    source (video frames and sorted folders put similar images next to each other)."""
    if calibration < 1:
        raise EffdetsegError(f"--calibration-images must be at least 1, got {calibration}")
    if total <= calibration:
        raise EffdetsegError(
            f"--calibration: {total} images, but {calibration} calibrate and at least one more must be held "
            "out to check agreement; lower --calibration-images or add images"
        )
    chosen = evenly_spaced(range(total), calibration)
    taken = set(chosen)
    return chosen, evenly_spaced([i for i in range(total) if i not in taken], held_out)


@dataclass
class Agreement:
    """Pixels labelled alike by two models, accumulated image by image."""

    images: int = 0
    pixels: int = 0
    agreeing: int = 0
    worst_image: float = 1.0  # the lowest agreement of one image

    def add(self, expected: np.ndarray, actual: np.ndarray) -> None:
        same = int((expected == actual).sum())
        self.images, self.pixels, self.agreeing = self.images + 1, self.pixels + expected.size, self.agreeing + same
        self.worst_image = min(self.worst_image, same / expected.size)

    @property
    def fraction(self) -> float:
        return self.agreeing / self.pixels if self.pixels else 0.0


def label_agreement(reference: Predictor, candidate: Predictor, images: Iterable[np.ndarray]) -> Agreement:
    """Pixels labelled alike by ``reference`` and ``candidate`` (each through ``Predictor.predict``:
    its own preprocessing, label maps at the original size), over all ``images``."""
    agreement = Agreement()
    for image in images:
        agreement.add(reference.predict(image), candidate.predict(image))
    return agreement
