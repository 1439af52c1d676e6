"""``data.cache=ram``: decoded once, the same samples as from the files, read-only, checked against memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdetseg.configs.compose import compose, group_options
from effdetseg.data import build_dataset
from effdetseg.data import cache as cache_module
from effdetseg.data.cache import CachedDataset, cache_datasets
from effdetseg.errors import EffdetsegError


def _folder(root: Path, n: int = 5) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        size = (40 + 4 * i, 48)  # different sizes: the cache keeps each sample's own shape
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.jpg")
        Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8)).save(root / "masks" / f"s{i}.png")
    return root


def _cfg(root: Path, *overrides: str):
    return compose(["data=folder", f"data.root={root}", "data.num_classes=3", "data.val_fraction=0.4",
                    "data.preprocessing.resize_height=32", "data.preprocessing.resize_width=32", *overrides]).data


def test_cached_samples_equal_the_files_and_are_read_only(tmp_path: Path) -> None:
    cfg = _cfg(_folder(tmp_path))
    dataset = build_dataset(cfg, "train")
    cached = CachedDataset(dataset)
    assert len(cached) == len(dataset) and cached.nbytes == sum(4 * m.size for _, m in map(dataset.load, range(len(dataset))))
    for i in range(len(dataset)):
        image, mask = cached.load(i)
        expected_image, expected_mask = dataset.load(i)
        assert np.array_equal(image, expected_image) and np.array_equal(mask, expected_mask)
        assert cached.sample_id(i) == dataset.sample_id(i)
        with pytest.raises(ValueError):
            image[0, 0, 0] = 1  # a transform writing into its input would change the cache
        # augmented items: the same (index, seed) gives the same crop from memory as from the files
        a, b = cached[(i, 7)], dataset[(i, 7)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


@pytest.mark.parametrize("preset", group_options()["data/augmentation"])
def test_every_augmentation_preset_runs_on_read_only_samples(tmp_path: Path, preset: str) -> None:
    cfg = _cfg(_folder(tmp_path), f"data/augmentation={preset}")
    cached = CachedDataset(build_dataset(cfg, "train"))
    for seed in range(3):
        item = cached[(0, seed)]
        assert item["image"].dtype == torch.float32 and item["mask"].shape == item["image"].shape[1:]


def test_a_cache_that_does_not_fit_is_one_line(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(_folder(tmp_path))
    datasets = {"train": build_dataset(cfg, "train"), "val": build_dataset(cfg, "val")}
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10_000)
    with pytest.raises(EffdetsegError) as error:
        cache_datasets(datasets, copies=2)
    message = str(error.value)
    assert message.startswith("data.cache=ram: ") and "× 2 processes" in message and "data.cache=none" in message
    assert "\n" not in message
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10**12)
    cached = cache_datasets(datasets)
    assert set(cached) == {"train", "val"} and all(isinstance(d, CachedDataset) for d in cached.values())


PEAK_SCRIPT = """
import resource, sys
from effdetseg.configs.compose import compose
from effdetseg.data import build_dataset
from effdetseg.data.cache import cache_datasets, estimated_bytes
cfg = compose(["data=folder", "data.root=" + sys.argv[1], "data.num_classes=3", "data.val_fraction=0.25"]).data
sets = {"train": build_dataset(cfg, "train"), "val": build_dataset(cfg, "val")}
estimate = sum(estimated_bytes(d) for d in sets.values())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cached = cache_datasets(sets, threads=2)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(estimate, after - before)
"""


@pytest.mark.slow
def test_the_peak_of_a_cache_of_large_images_stays_near_its_estimate(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    gradient = np.linspace(0, 255, 2000, dtype=np.uint8)
    for i in range(12):
        image = np.dstack([np.tile(gradient, (1500, 1))] * 3) // (i + 1)
        Image.fromarray(image).save(root / "images" / f"s{i}.jpg", quality=80)
        Image.fromarray(np.zeros((1500, 2000), np.uint8)).save(root / "masks" / f"s{i}.png")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    estimate, peak = (int(v) for v in out.stdout.split())
    assert estimate == 12 * 4 * 2000 * 1500
    assert peak <= 1.3 * estimate, f"cache peak {peak / 2**20:.0f} MiB for an estimate of {estimate / 2**20:.0f} MiB"
