"""Nothing a refused command or an export can destroy: a resume that is refused leaves its
experiment folder byte for byte as it was, and export, predict, benchmark and evaluate outputs never
replace a checkpoint or a file a training run owns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from effdetseg import create_model, save_model
from effdetseg.cli import main as cli
from effdetseg.engine import experiment as exp
from effdetseg.io.record import Provenance

from conftest import one_error_line

TINY = [
    "train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16", "data.batch_size=2", "data.num_workers=0",
    "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64",
    "train.progress=false", "validation.grid_images=1",
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}




# ----------------------------------------------------------------------------- a refused resume


def test_reading_the_history_of_a_resume_rewrites_nothing_until_it_appends(tmp_path: Path) -> None:
    records = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "val": {"miou": 0.3}}]
    metrics = tmp_path / exp.METRICS
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "tra'  # the last line cut by a kill
    metrics.write_text(text)
    assert exp.read_history(tmp_path, 1) == records[:1]
    assert metrics.read_text() == text  # a resume refused now loses nothing
    exp.append_history(tmp_path, {"epoch": 2, "train_loss": 0.25})
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == [records[0], {"epoch": 2, "train_loss": 0.25}]
    exp.append_history(tmp_path, {"epoch": 3})
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_a_resume_refused_by_its_spent_budget_changes_nothing_in_the_folder(tmp_path: Path, capsys) -> None:
    # Epochs far longer than the budget: the run ends inside its first epoch, whose record (with
    # the run's only validation) is after the checkpoint's last complete epoch.
    argv = ["train", *TINY, "data.train_samples=4000", "data.val_samples=2", "data.cache=none", "validation.epoch_step=0",
            "train.max_minutes=0.4", f"experiments_dir={tmp_path}", "experiment_name=bud"]
    assert cli(argv) == 0
    run = tmp_path / "bud"
    history = (run / exp.METRICS).read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["val"]
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["epoch"] == 0  # stopped inside epoch 1
    # A budget no larger than the time used is spent (the same budget again may hold a few more
    # steps when the machine is less loaded than when the run kept its reserve).
    spent = f"train.max_minutes={last['budget_spent_s'] / 60:.4f}"
    capsys.readouterr()
    before = snapshot(run)
    assert cli(["train", f"resume={run}", spent]) == 2
    one_error_line(capsys, "train", "train.max_minutes", "raise train.max_minutes")
    assert snapshot(run) == before
    # With other overrides (written to config.yaml before the budget is checked) too.
    assert cli(["train", f"resume={run}", spent, "validation.grid_images=0"]) == 2
    capsys.readouterr()
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- outputs never replace a run's files


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experiment folder as a finished run leaves it (a tiny network, no training)."""
    from PIL import Image

    from effdetseg.io.model_files import write_model_file
    from effdetseg.io.record import ModelRecord

    run = tmp_path_factory.mktemp("experiments") / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=3, backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16)
    save_model(model, run / "best.pth", provenance=Provenance(data="synthetic", epoch=1))
    state = {"optimizer": {"state": {}, "param_groups": []}, "epoch": 1, "global_step": 2, "rng": []}
    write_model_file(run / "last.pth", ModelRecord.for_model(model), model.state_dict(), state)
    from omegaconf import OmegaConf

    from effdetseg.configs.compose import compose

    OmegaConf.save(compose([*TINY, "data.num_classes=3", "train.model.num_classes=3"]), run / "config.yaml", resolve=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "train.log").write_text("trained\n")
    for name in ("curves.png", "per_class_iou.png", "val_grid.png"):
        Image.new("RGB", (8, 8)).save(run / name)
    return run


def test_what_holds_weights_and_what_a_run_owns(tmp_path: Path, experiment: Path) -> None:
    from safetensors.torch import save_file

    from effdetseg.io.files import holds_weights, run_owner

    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "m.torchscript.pt"))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    assert [holds_weights(tmp_path / n) for n in ("state.pth", "legacy.pth", "w.safetensors", "m.torchscript.pt", "m.onnx")] == [
        True, True, True, False, False]
    assert run_owner(experiment / "last.pth") == experiment and run_owner(experiment / "tensorboard" / "events.x") == experiment
    assert run_owner(experiment / "best.onnx") is None and run_owner(tmp_path / "config.yaml") is None


def test_export_never_replaces_a_checkpoint_or_a_file_of_a_run(tmp_path: Path, experiment: Path, capsys) -> None:
    other = tmp_path / "other.pth"
    other.write_bytes((experiment / "best.pth").read_bytes())
    hub = tmp_path / "hub"
    hub.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(hub / "model.safetensors"))
    before = {**snapshot(experiment), **snapshot(tmp_path)}
    best = str(experiment / "best.pth")
    cases = [
        (["--output", str(experiment / "last.pth")], [str(experiment / "last.pth"), "training run", str(experiment)]),
        (["--format", "onnx", "--output", str(experiment / "train.log")], ["train.log", "training run"]),
        (["--format", "openvino", "--output", str(experiment / "tensorboard")], ["tensorboard", "training run"]),
        (["--output", str(other)], [str(other), "checkpoint"]),
        (["--format", "hub", "--output", str(experiment)], [str(experiment), "per_class_iou.png"]),
        (["--format", "hub", "--output", str(hub)], [str(hub / "model.safetensors"), "checkpoint"]),
    ]
    for argv, names in cases:
        if "openvino" in argv:
            pytest.importorskip("openvino")
        assert cli(["export", "--checkpoint", best, *argv]) == 2, argv
        one_error_line(capsys, "export", *names)
    assert {**snapshot(experiment), **snapshot(tmp_path)} == before
    assert not (experiment / "tensorboard").exists()


def test_predict_benchmark_and_evaluate_never_replace_a_file_of_a_run(tmp_path: Path, experiment: Path, capsys) -> None:
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    before = snapshot(experiment)
    best = str(experiment / "best.pth")
    assert cli(["predict", "--data", str(image), "--checkpoint", best, "--output", str(experiment / "curves.png"), "--overwrite"]) == 2
    one_error_line(capsys, "predict", str(experiment / "curves.png"), "training run")
    assert cli(["benchmark", "--json", str(experiment / "metrics.jsonl"), "--iters", "1", "--warmup", "0"]) == 2
    one_error_line(capsys, "benchmark", str(experiment / "metrics.jsonl"), "--json")
    assert cli(["evaluate", "--checkpoint", best, "--output", str(experiment / "metrics.jsonl")]) == 2
    one_error_line(capsys, "evaluate", "metrics.jsonl", "training run")
    assert snapshot(experiment) == before


@pytest.mark.slow
def test_an_export_still_replaces_its_own_earlier_export(tmp_path: Path, experiment: Path, capsys) -> None:
    output = tmp_path / "model.torchscript.pt"
    argv = ["export", "--checkpoint", str(experiment / "best.pth"), "--output", str(output), "--resolution", "64"]
    assert cli(argv) == 0
    first = output.stat().st_ino
    assert cli(argv) == 0
    assert output.stat().st_ino != first  # written again
