"""Every way a careless or hostile user breaks a command gets one error line naming the file or key,
the documented exit code, and changes no input and no earlier output.

Each bad input is made here, at test time: corrupt and truncated images, a decompression-bomb PNG
header, a malicious pickle, an injected model name, a poisoned experiment config, a locked
experiment, a full disk (simulated where a real one cannot be made).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.configs.compose import compose
from effdetseg.errors import EffdetsegError

from conftest import REPO, one_error_line
from effdetseg.io.files import FolderLock, atomic_write
from effdetseg.io.model_files import write_model_file
from effdetseg.io.record import Provenance

TINY_RUN = [
    "train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16", "data.batch_size=2", "data.num_workers=0",
    "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64",
    "train.progress=false", "train.num_epochs=1", "validation.grid_images=1", "train.model.backbone_pretrained=false",
]
TINY = [*TINY_RUN, "data.train_samples=4", "data.val_samples=2"]  # on the synthetic data


# ----------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file below ``roots``: path → hash of its bytes."""
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files




def bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A 69-byte PNG whose header claims width × height pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR checksum
    path.write_bytes(bytes(data))
    return path


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (40, 52)) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


class Marker:
    """Unpickling it creates a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(autouse=True)
def pixel_limit():
    """``--max-image-pixels`` sets the process's limit; give the next test PIL's default back."""
    default = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = default


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=6, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    save_model(model, path, provenance=Provenance(data="synthetic"))
    return path


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    """A ``data=folder`` dataset of six 64×64 image/mask pairs."""
    root = tmp_path / "folder_data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        photo(root / "images" / f"s{i}.png", seed=i, size=(64, 64))
        Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(root / "masks" / f"s{i}.png")
    return root


def folder_overrides(root: Path, workers: int = 1) -> list[str]:
    return [f"data.root={root}", "data.num_classes=3", f"data.num_workers={workers}", "data.val_fraction=0.34"]


# ----------------------------------------------------------------------------- predict never destroys data


def test_predict_refuses_an_output_equal_to_its_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    image = photo(tmp_path / "photo.jpg")
    before = snapshot(tmp_path)
    assert cli(["predict", "--data", str(image), "--checkpoint", str(checkpoint), "--output", str(image)]) == 2
    one_error_line(capsys, "predict", str(image), "input")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_predict_into_its_input_folder_gives_every_image_its_own_files(tmp_path: Path, checkpoint: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["a.jpg", "a.png", "dog.jpg", "dog_mask.png"]):
        photo(folder / name, seed=i)
    inputs = snapshot(folder)
    argv = ["predict", "--data", str(folder), "--checkpoint", str(checkpoint), "--resolution", "64", "--output", str(folder)]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert snapshot(folder).items() >= inputs.items()  # every input unchanged
    written = sorted(set(os.listdir(folder)) - {Path(p).name for p in inputs})
    assert len(written) == 4 * 3  # four images, three files each, none shared
    for stem in ("a_jpg", "a_png", "dog_jpg", "dog_mask"):
        assert {f"{stem}_mask.png", f"{stem}_overlay.jpg", f"{stem}_labels.png"} <= set(written), stem
    assert f"{folder / 'a.jpg'}: its names would overwrite an input or another image's files; writing a_jpg_mask.png" in out


@pytest.mark.slow
def test_predict_replaces_an_earlier_run_only_with_overwrite(tmp_path: Path, checkpoint: Path, capsys) -> None:
    image = photo(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    argv = ["predict", "--data", str(image), "--checkpoint", str(checkpoint), "--resolution", "64", "--output", str(out)]
    assert cli(argv) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert cli(argv) == 2
    one_error_line(capsys, "predict", str(out / "photo_mask.png"), "--overwrite")
    assert snapshot(tmp_path) == before
    assert cli([*argv, "--overwrite"]) == 0


# ----------------------------------------------------------------------------- images over the pixel limit


def test_decompression_bomb_is_one_line_and_skipped_in_a_folder(tmp_path: Path, checkpoint: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    bomb = bomb_png(folder / "bomb.png")
    photo(folder / "fine.jpg")
    base = ["--checkpoint", str(checkpoint), "--resolution", "64"]
    before = snapshot(folder)

    assert cli(["predict", "--data", str(bomb), *base, "--output", str(tmp_path / "one")]) == 2
    one_error_line(capsys, "predict", str(bomb), "1,600,000,000 pixels", "--max-image-pixels")
    assert not (tmp_path / "one").exists()

    assert cli(["predict", "--data", str(folder), *base, "--output", str(tmp_path / "many")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if str(bomb) in line]) == 1 and len(err) == 2, err  # the file, then the count
    assert (tmp_path / "many" / "fine_mask.png").is_file()
    assert snapshot(folder) == before

    assert cli(["classify", "--data", str(bomb)]) == 2
    one_error_line(capsys, "classify", str(bomb))
    # A lower limit refuses an ordinary photo the same way.
    argv = ["predict", "--data", str(folder / "fine.jpg"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "x")]
    assert cli([*argv, "--resolution", "32", "--max-image-pixels", "2000"]) == 2  # the photo is 52×40 = 2080 pixels
    one_error_line(capsys, "predict", "fine.jpg", "image of 2,080 pixels is over the limit of 2,000 pixels")
    assert cli([*argv, "--resolution", "64", "--max-image-pixels", "2000"]) == 2  # and so is the network input
    one_error_line(capsys, "predict", "--resolution 64", "2,000")


# ----------------------------------------------------------------------------- one line for every bad input


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--device", "gpu"], ["'gpu'"]),
        (["--resolution", "100000"], ["--resolution 100000"]),
        (["--resolution", "-5"], ["--resolution"]),
        (["--output", "{blocker}/out"], ["blocker"]),
    ],
)
def test_predict_bad_arguments(tmp_path: Path, checkpoint: Path, capsys, argv: list[str], names: list[str]) -> None:
    image = photo(tmp_path / "photo.jpg")
    (tmp_path / "blocker").write_text("a file, not a folder")
    argv = [a.format(blocker=tmp_path / "blocker") for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    assert cli(["predict", "--data", str(image), "--checkpoint", str(checkpoint), *argv]) == 2
    one_error_line(capsys, "predict", *names)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--device", "cuda:99"], ["cuda:99"]),
        (["--resolution", "-5"], ["--resolution"]),
        (["--model", "efficientdet_d0_seg"], ["efficientdet_d0_seg", "segmentation"]),
        (["--model", "no_such_model"], ["no_such_model"]),
        (["--topk", "0"], ["--top-k"]),
    ],
)
def test_classify_bad_arguments(tmp_path: Path, capsys, argv: list[str], names: list[str]) -> None:
    image = photo(tmp_path / "photo.jpg")
    assert cli(["classify", "--data", str(image), *argv]) == 2
    one_error_line(capsys, "classify", *names)


def test_malicious_and_injected_checkpoints(tmp_path: Path, checkpoint: Path, capsys) -> None:
    image = photo(tmp_path / "photo.jpg")
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"model": Marker(marker)}, evil)
    payload = torch.load(checkpoint, weights_only=True)
    payload["record"]["architecture"]["name"] = "os.system"
    injected = tmp_path / "injected.pth"
    torch.save(payload, injected)
    payload["record"]["architecture"]["name"] = "efficientdet_d0_seg"
    payload["record"]["architecture"]["backbone"] = "../../evil"
    backbone = tmp_path / "backbone.pth"
    torch.save(payload, backbone)
    before = snapshot(tmp_path)
    cases = [
        (["predict", "--data", str(image), "--checkpoint", str(evil), "--output", str(tmp_path / "o")], evil),
        (["predict", "--data", str(image), "--weights", str(evil), "--model", "efficientdet_d0_seg", "--output", str(tmp_path / "o")], evil),
        (["evaluate", "--checkpoint", str(evil)], evil),
        (["classify", "--data", str(image), "--weights", str(evil)], evil),
        (["predict", "--data", str(image), "--checkpoint", str(injected), "--output", str(tmp_path / "o")], injected),
        (["classify", "--data", str(image), "--weights", str(injected)], injected),
        (["evaluate", "--checkpoint", str(injected)], injected),
        (["predict", "--data", str(image), "--checkpoint", str(backbone), "--output", str(tmp_path / "o")], backbone),
    ]
    for argv, named in cases:
        assert cli(argv) == 2, argv
        line = one_error_line(capsys, argv[0], str(named))
        assert "weights_only" not in line  # no advice to unpickle
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_poisoned_experiment_config_is_refused(tmp_path: Path, checkpoint: Path, capsys) -> None:
    run = tmp_path / "experiments" / "shared"
    run.mkdir(parents=True)
    cfg = compose(TINY)
    marker = tmp_path / "marker"
    OmegaConf.update(cfg, "data.augmentation.val", [{"_target_": "builtins.open", "file": str(marker), "mode": "w"}], merge=False)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    (run / "best.pth").write_bytes(checkpoint.read_bytes())
    before = snapshot(tmp_path)
    assert cli(["evaluate", "--checkpoint", str(run / "best.pth")]) == 2
    one_error_line(capsys, "evaluate", "data.augmentation.val[0]._target_: builtins.open")
    assert not marker.exists() and snapshot(tmp_path) == before


def test_evaluate_bad_values(tmp_path: Path, checkpoint: Path, capsys) -> None:
    (tmp_path / "blocker").write_text("a file")
    before = snapshot(tmp_path)
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "data.batch_size=0"]) == 2
    one_error_line(capsys, "evaluate", "data.batch_size")
    # The output is checked before the evaluation runs, not after.
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "blocker" / "m.json")]) == 2
    one_error_line(capsys, "evaluate", "blocker")
    assert snapshot(tmp_path) == before


def test_bad_image_in_a_dataloader_worker_is_the_original_line(folder_data: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    bad = folder_data / "images" / "s1.png"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    bomb_png(folder_data / "images" / "s2.png", 64, 64)  # fine: within the limit
    before = snapshot(folder_data)
    for split in ("train", "val"):  # one of them holds s1
        code = cli(["evaluate", "--checkpoint", str(checkpoint), "--split", split, "data=folder", *folder_overrides(folder_data),
                    "data.num_classes=6", "--output", str(tmp_path / f"{split}.json")])
        if code == 0:
            capsys.readouterr()
            continue
        assert code == 2
        line = one_error_line(capsys, "evaluate", str(bad))
        assert "DataLoader" not in line and "Traceback" not in line
        break
    else:
        raise AssertionError("no split met the bad image")
    assert snapshot(folder_data) == before


# ----------------------------------------------------------------------------- training runs


def test_train_bad_setups_leave_nothing_behind(tmp_path: Path, capsys) -> None:
    experiments = tmp_path / "experiments"
    (tmp_path / "a_file").write_text("x")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(struct.pack("<Q", 16) + b"not a header")
    cases = [
        ([f"experiments_dir={tmp_path / 'a_file'}"], ["experiments_dir", "a_file", "not a folder"]),
        ([f"train.model.weights={corrupt}"], [str(corrupt)]),
        (["data.batch_size=1"], ["data.batch_size=1", "64×64", "data.batch_size=2", "≥ 129"]),
        (["train.decoder_lr_scale=-5"], ["train.decoder_lr_scale", "-5"]),
        (["train.freeze_backbone_stride=3"], ["train.freeze_backbone_stride", "got 3"]),
        (["train.optimizer.lr=nan"], ["train.optimizer.lr", "nan", "not a finite number"]),
        (["train.ema.decay=inf"], ["train.ema.decay", "inf"]),
        (["train.max_minutes=-1"], ["train.max_minutes", "-1"]),
        (["train.threads=0"], ["train.threads", "auto"]),
        (["data.num_workers=many"], ["data.num_workers", "many"]),
        (["train.max_minutes=1", "train.scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "+train.scheduler.max_lr=0.01"],
         ["train.scheduler", "OneCycleLR", "train.max_minutes"]),
    ]
    for overrides, names in cases:
        before = snapshot(tmp_path)
        argv = ["train", *TINY, f"experiments_dir={experiments}", "experiment_name=run", *overrides]
        assert cli(argv) == 2, overrides
        one_error_line(capsys, "train", *names)
        assert snapshot(tmp_path) == before
        assert not (experiments / "run").exists()  # the same command can run again


@pytest.mark.slow
def test_resume_with_a_config_of_another_model_is_one_line(tmp_path: Path, capsys) -> None:
    assert cli(["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=run"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("name: efficientdet_d0_seg", "name: efficientdet_d1_seg"))
    before = snapshot(run)
    assert cli(["train", f"resume={run}", "train.num_epochs=2"]) == 2
    line = one_error_line(capsys, "train", str(run / "last.pth"), "efficientdet_d0_seg", "efficientdet_d1_seg", "train.model.weights")
    assert "Traceback" not in line
    assert snapshot(run) == before


@pytest.mark.slow
def test_train_bad_image_with_workers_then_the_same_command_again(folder_data: Path, tmp_path: Path, capsys) -> None:
    experiments = tmp_path / "experiments"
    bomb_png(folder_data / "images" / "s3.png")
    (folder_data / "images" / "s5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["train", *TINY_RUN, "data=folder", *folder_overrides(folder_data), f"experiments_dir={experiments}", "experiment_name=run"]
    before = snapshot(folder_data)
    for _ in range(2):  # a failed run leaves nothing that blocks the same command
        assert cli(argv) == 2
        line = one_error_line(capsys, "train")
        assert ("s3.png" in line and "1,600,000,000 pixels" in line) or "s5.png" in line, line
        assert "DataLoader" not in line
        assert not (experiments / "run").exists()
    assert snapshot(folder_data) == before


def _experiment(tmp_path: Path, *overrides: str) -> Path:
    """An experiment folder as a run leaves it after its config is written (for resume)."""
    run = tmp_path / "experiments" / "run"
    run.mkdir(parents=True)
    OmegaConf.save(compose([*TINY, f"experiments_dir={tmp_path / 'experiments'}", "experiment_name=run", *overrides]), run / "config.yaml", resolve=True)
    return run


def test_a_locked_experiment_is_refused_and_a_stale_lock_taken_over(tmp_path: Path, capsys) -> None:
    run = _experiment(tmp_path, "data.batch_size=1")  # resume fails right after taking the folder
    orphan = run / ".last.pth.k2j4h.tmp"
    orphan.write_bytes(b"\0" * 1000)
    with FolderLock(run, "experiment"):
        before = snapshot(run)
        assert cli(["train", f"resume={run}"]) == 2
        one_error_line(capsys, "train", str(run), f"PID {os.getpid()}")
        assert snapshot(run) == before  # the orphan too: it might be the owner's file in progress

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / FolderLock.NAME).write_text(f"{dead.pid}\n")  # left by a killed run, whose lock died with it
    assert cli(["train", f"resume={run}"]) == 2
    one_error_line(capsys, "train", "data.batch_size=1")  # got past the lock
    assert not orphan.exists()  # and removed what the killed run left
    assert not (run / FolderLock.NAME).exists()  # released
    assert "removed 1 temporary file(s) a stopped run left: .last.pth.k2j4h.tmp" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- full disks and failed writes


def test_a_full_disk_names_the_file_and_the_cause(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.pth"
    target.write_bytes(b"the previous checkpoint")
    model = create_model("efficientdet_d0_seg", num_classes=2, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    from effdetseg.io import files, model_files
    from effdetseg.io.record import ModelRecord

    class FullDisk(io.RawIOBase):
        """A file on a full disk: every write fails as the OS fails it."""

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model_files, "open", lambda path, mode: FullDisk(), raising=False)
    with pytest.raises(EffdetsegError) as error:
        write_model_file(target, ModelRecord.for_model(model), model.state_dict())
    assert str(error.value) == f"{target}: cannot write (No space left on device); any earlier version of the file is unchanged"
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left

    # A writer that hides the cause entirely, on a disk with no space left.
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: type("U", (), {"free": 0})())
    with pytest.raises(EffdetsegError, match="No space left on device"):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")))
    assert target.read_bytes() == b"the previous checkpoint"


def test_predict_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path, checkpoint: Path, capsys, monkeypatch) -> None:
    image = photo(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    argv = ["predict", "--data", str(image), "--checkpoint", str(checkpoint), "--resolution", "64", "--output", str(out), "--overwrite"]
    assert cli(argv) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    real_save = Image.Image.save

    def save_on_a_full_disk(self, fp, *args, **kwargs):  # writes a little, then the disk is full
        real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", save_on_a_full_disk)
    assert cli(argv) == 2
    one_error_line(capsys, "predict", str(out / "photo_mask.png"), "No space left on device", "unchanged")
    assert snapshot(tmp_path) == before  # the earlier outputs are whole, no temporary file is left


# ----------------------------------------------------------------------------- round 4: one line each


def test_data_check_bad_worker_counts_are_one_line(capsys) -> None:
    for value in ("-3", "abc", "1.5"):
        assert cli(["data", "check", f"data.num_workers={value}", "data.train_samples=4", "data.val_samples=2"]) == 2
        one_error_line(capsys, "data", "data.num_workers", value)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--threads", "-1"], ["--threads", "-1"]),
        (["--threads", "0"], ["--threads", "0"]),
        (["--num-classes", "0"], ["--num-classes", "0"]),
        (["--num-classes", "-3"], ["--num-classes", "-3"]),
    ],
)
def test_benchmark_bad_counts_are_one_line(capsys, argv: list[str], names: list[str]) -> None:
    assert cli(["benchmark", "--resolution", "64", "--iters", "1", "--warmup", "0", *argv]) == 2
    one_error_line(capsys, "benchmark", *names)


def test_train_threads_beyond_the_cores(tmp_path: Path, capsys, monkeypatch) -> None:
    from effdetseg.engine import loaders

    monkeypatch.setattr(loaders, "available_cores", lambda: 2)
    plan = loaders.plan_cpu(torch.device("cpu"), 3, 0, cached=True)
    assert plan.threads == 3 and "warning: more threads than the 2 core(s)" in plan.why
    assert "warning" not in loaders.plan_cpu(torch.device("cpu"), 2, 0, cached=True).why
    experiments = tmp_path / "experiments"
    for overrides, names in [
        (["train.threads=100000"], ["train.threads=100000", "2 core(s)", "train.threads=auto"]),
        (["train.max_minutes=1e308"], ["train.max_minutes=1e+308", "train.max_minutes=null"]),
        (["data.num_workers=-3"], ["data.num_workers", "-3"]),
    ]:
        assert cli(["train", *TINY, f"experiments_dir={experiments}", "experiment_name=run", *overrides]) == 2, overrides
        one_error_line(capsys, "train", *names)
        assert not (experiments / "run").exists()


def test_records_that_lie_are_one_line_naming_the_record(tmp_path: Path, checkpoint: Path, capsys) -> None:
    image = photo(tmp_path / "photo.jpg")
    payload = torch.load(checkpoint, weights_only=True)
    cases = [
        ("size", ("preprocessing", "size", [100000, 100000]), ["record preprocessing.size", "100000×100000", "8192"]),
        ("mean", ("preprocessing", "mean", [float("nan"), 0.4, 0.4]), ["record preprocessing.mean", "finite"]),
        ("std", ("preprocessing", "std", [0.2, float("inf"), 0.2]), ["record preprocessing.std", "finite"]),
        ("classes", ("architecture", "num_classes", 3), ["6 classes", "the model 3"]),
    ]
    for name, (section, key, value), names in cases:
        changed = {**payload, "record": {**payload["record"], section: {**payload["record"][section], key: value}}}
        path = tmp_path / f"{name}.pth"
        torch.save(changed, path)
        assert cli(["predict", "--data", str(image), "--checkpoint", str(path), "--output", str(tmp_path / name)]) == 2, name
        line = one_error_line(capsys, "predict", str(path), *names)
        assert "--batch-size" not in line
        assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_an_exported_record_whose_classes_differ_from_the_network_is_one_line(tmp_path: Path, checkpoint: Path, capsys) -> None:
    import json

    import onnx

    exported = tmp_path / "tiny.onnx"
    assert cli(["export", "--checkpoint", str(checkpoint), "--output", str(exported), "--resolution", "64"]) == 0
    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == "effdetseg_record":
            record = json.loads(prop.value)
            record["architecture"]["num_classes"] = 3
            prop.value = json.dumps(record)
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    capsys.readouterr()
    image = photo(tmp_path / "photo.jpg")
    assert cli(["predict", "--data", str(image), "--checkpoint", str(tampered), "--output", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "predict", str(tampered), "3 classes", "outputs 6")


def _predict_in_a_process(model: Path, image: Path, output: Path, *extra: str) -> tuple[int, list[str]]:
    """predict in its own process, with a timeout: a model file that hangs the read must not hang the tests."""
    proc = subprocess.run([sys.executable, "-m", "effdetseg", "predict", "--data", str(image), "--checkpoint", str(model),
                           "--output", str(output), *extra], capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def test_model_files_that_are_fifos_or_links_out_of_their_folder_are_refused(tmp_path: Path) -> None:
    image = photo(tmp_path / "photo.jpg")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    code, err = _predict_in_a_process(fifo, image, tmp_path / "out")
    assert code == 2 and len(err) == 1 and str(fifo) in err[0] and "not a regular file" in err[0], err

    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the OpenVINO IR cases need the optional extra effdetseg[openvino]")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.xml").write_text("<net name='x' version='11'><layers/></net>")
    cases = []
    ir = tmp_path / "fifo-ir"
    ir.mkdir()
    (ir / "model.xml").write_text("<net name='x' version='11'><layers/></net>")
    os.mkfifo(ir / "model.bin")
    cases.append((ir, ir / "model.bin", "not a regular file"))
    ir = tmp_path / "device-ir"
    ir.mkdir()
    (ir / "model.xml").write_text("<net name='x' version='11'><layers/></net>")
    (ir / "model.bin").symlink_to("/dev/zero")
    cases.append((ir, ir / "model.bin", "outside the model's folder"))
    ir = tmp_path / "linked-ir"
    ir.mkdir()
    (ir / "model.xml").symlink_to(elsewhere / "secret.xml")
    cases.append((ir, ir / "model.xml", "outside the model's folder"))
    for folder, named, why in cases:
        code, err = _predict_in_a_process(folder, image, tmp_path / "out")
        assert code == 2 and len(err) == 1 and str(named) in err[0] and why in err[0], (folder, err)
    assert not (tmp_path / "out").exists()


def test_two_images_of_one_stem_in_a_training_folder_are_named(folder_data: Path, tmp_path: Path, capsys) -> None:
    photo(folder_data / "images" / "s2.jpg", seed=9, size=(64, 64))  # beside s2.png: which one has the mask?
    overrides = ["data=folder", *folder_overrides(folder_data, workers=0)]
    assert cli(["data", "check", *overrides, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "2 files share the id s2 (s2.jpg, s2.png)" in out
    experiments = tmp_path / "experiments"
    argv = ["train", *TINY_RUN, *overrides, "train.model.backbone_pretrained=false", f"experiments_dir={experiments}", "experiment_name=run"]
    assert cli(argv) == 2
    one_error_line(capsys, "train", "s2.jpg", "s2.png", "rename")
    assert not (experiments / "run").exists()
