"""Model folders in the Hugging Face Hub layout (effdetseg.save_pretrained / from_pretrained,
`export --format hub`): bit-exact round trip, the generated model card, the folder as --checkpoint
of predict and of the demo's card tab, and tampered folders. Local folders only: no network."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from effdetseg import Predictor, create_model, from_pretrained, save_model, save_pretrained
from effdetseg.cli import main as cli
from effdetseg.engine.metrics import SegmentationMetrics
from effdetseg.errors import EffdetsegError
from effdetseg.io.labels import LabelSet
from effdetseg.io.model_files import read_model_file
from effdetseg.io.record import Preprocessing, Provenance
from effdetseg.models.complexity import count_parameters
from effdetseg.sharing.demo import DemoModel, model_card
from conftest import SHARED_DATA

VOC_IMAGES = SHARED_DATA / "voc2012_sample" / "JPEGImages"
LABELS = LabelSet(("sky", "road", "car"), ((0, 0, 255), (128, 128, 128), (255, 0, 0)))
COMMAND = ("effdetseg", "train", "data=camvid", "train.num_epochs=2", "experiment_name=tiny run")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A training run's best.pth (record with metrics, config and command) and its val_grid.png."""
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=3, bifpn_channels=16, head_channels=16).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so the buffers are checked too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    metrics = SegmentationMetrics.from_matrix(torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])).to_dict(LABELS.names, with_matrix=True)
    config = {"data": {"name": "camvid"}, "train": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.001}}}
    run = tmp_path_factory.mktemp("run")
    checkpoint = run / "best.pth"
    save_model(model, checkpoint, preprocessing=Preprocessing(size=(64, 96)), labels=LABELS,
               provenance=Provenance(data="camvid", epoch=2, weights="model", metrics=metrics, config=config, command=COMMAND))
    Image.fromarray(np.full((20, 30, 3), 77, dtype=np.uint8)).save(run / "val_grid.png")
    folder = save_pretrained(checkpoint, run / "hub", license="apache-2.0")
    return {"model": model, "checkpoint": checkpoint, "folder": folder, "metrics": metrics}


def test_round_trip_is_bit_exact(trained: dict, tmp_path: Path) -> None:
    folder = trained["folder"]
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "per_class_iou.png", "val_grid.png"}
    original, saved = read_model_file(trained["checkpoint"]), read_model_file(folder)
    assert saved.record == original.record
    assert json.loads((folder / "config.json").read_text())["labels"]["2"] == {"class": "car", "color": [255, 0, 0]}
    loaded = from_pretrained(folder).state_dict()
    expected = trained["model"].state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) and loaded[k].dtype == expected[k].dtype for k in expected)
    # a built network saves the same weights (its record: default preprocessing, no labels)
    again = save_pretrained(trained["model"], tmp_path / "from_module")
    assert all(torch.equal(v, expected[k]) for k, v in read_model_file(again).state_dict.items())


def test_card_holds_the_checkpoints_numbers(trained: dict) -> None:
    folder, metrics = trained["folder"], trained["metrics"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "effdetseg"
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.eval_results[0].metric_value == round(100 * metrics["miou"], 2)
    text = card.text
    assert text.lstrip().startswith("# efficientdet_d0_seg")
    assert f"| mIoU | {100 * metrics['miou']:.2f} % |" in text
    assert f"| pixel accuracy | {100 * metrics['pixel_accuracy']:.2f} % |" in text
    assert f"| 0 | sky | #0000ff | {100 * metrics['per_class']['sky']['iou']:.2f} % |" in text
    assert f"| 1 | road | #808080 | {100 * metrics['per_class']['road']['iou']:.2f} % |" in text
    assert "| 2 | car | #ff0000 | – |" in text  # never seen: no IoU
    assert f"| parameters | {count_parameters(trained['model']) / 1e6:.2f} M |" in text
    assert "| GMACs at 64×96 |" in text and "| training data | camvid |" in text
    assert "effdetseg train data=camvid train.num_epochs=2 'experiment_name=tiny run'" in text
    assert "_target_: torch.optim.AdamW" in text  # the config, as data
    assert "![per-class IoU on the validation split](per_class_iou.png)" in text and "(val_grid.png)" in text
    assert "## Intended use and limitations" in text and "apache-2.0" in text
    assert Image.open(folder / "per_class_iou.png").format == "PNG"
    assert (folder / "val_grid.png").read_bytes() == (trained["checkpoint"].parent / "val_grid.png").read_bytes()


def test_card_without_validation_data_says_so(trained: dict, tmp_path: Path) -> None:
    plain = tmp_path / "d0.safetensors"
    save_model(trained["model"], plain)
    assert cli(["export", "--checkpoint", str(plain), "--format", "hub", "--output", str(tmp_path / "out")]) == 0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"config.json", "model.safetensors", "README.md"}
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "other" and not card.data.eval_results
    assert "## Validation" not in card.text
    assert "No validation metrics" in card.text and "No prediction grid" in card.text


@pytest.mark.slow
def test_predict_on_the_folder_equals_predict_on_the_checkpoint(trained: dict, tmp_path: Path) -> None:
    images = sorted(VOC_IMAGES.glob("*.jpg"))[:2]
    if len(images) < 2:
        pytest.fail(f"real sample images missing under {VOC_IMAGES}")
    data = tmp_path / "images"
    data.mkdir()
    for image in images:
        shutil.copy(image, data)
    for name, source in (("checkpoint", trained["checkpoint"]), ("folder", trained["folder"])):
        assert cli(["predict", "--data", str(data), "--checkpoint", str(source), "--device", "cpu", "--output", str(tmp_path / name)]) == 0
    for image in images:
        maps = [(tmp_path / name / f"{image.stem}_labels.png").read_bytes() for name in ("checkpoint", "folder")]
        assert maps[0] == maps[1]
    assert np.array_equal(Predictor(trained["folder"], device="cpu").predict(images[0]),
                          Predictor(trained["checkpoint"], device="cpu").predict(images[0]))


def test_demo_card_tab_shows_the_generated_card(trained: dict) -> None:
    folder = trained["folder"]
    predictor = Predictor(folder, device="cpu")
    shown = DemoModel(predictor, model_card(folder, predictor)).info()["card"]
    assert shown == ModelCard.load(folder / "README.md").text.lstrip("\n")
    assert shown.startswith("# efficientdet_d0_seg") and f"| mIoU | {100 * trained['metrics']['miou']:.2f} % |" in shown
    assert "license:" not in shown  # the Hub metadata block is not page text


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda c: c["architecture"].update(name="no_such_model"), "architecture.name 'no_such_model' is not a model effdetseg knows"),
        (lambda c: c["architecture"].update(_target_="os.system"), "architecture._target_ is not allowed"),
        (lambda c: c.pop("architecture"), "has no architecture"),
    ],
)
def test_tampered_config_is_one_error_line(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper, message: str) -> None:
    folder = tmp_path / "tampered"
    shutil.copytree(trained["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    tamper(config)
    (folder / "config.json").write_text(json.dumps(config))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    assert cli(["predict", "--data", str(image), "--checkpoint", str(folder), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(folder) in err
    with pytest.raises(EffdetsegError, match="not a model effdetseg knows|_target_|no architecture|cannot build"):
        Predictor(folder, device="cpu")


def test_folder_missing_weights_and_push_without_token_are_one_error(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "no_weights"
    shutil.copytree(trained["folder"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(EffdetsegError, match="model.safetensors: not found"):
        from_pretrained(folder)
    with pytest.raises(EffdetsegError, match="not a Hub repo id"):
        from_pretrained(tmp_path / "missing" / "folder")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(EffdetsegError, match="no Hugging Face token"):
        save_pretrained(trained["checkpoint"], tmp_path / "pushed", push_to_hub=True, repo_id="someone/tiny")
    assert not (tmp_path / "pushed").exists()


def test_unbounded_architecture_values_are_one_line(trained: dict, tmp_path: Path) -> None:
    """A config.json asking for 10⁹ BiFPN channels (or any huge number) stops before any allocation."""
    for key, value in (("bifpn_channels", 10**9), ("head_layers", 10**6), ("num_classes", 10**8)):
        folder = tmp_path / key
        shutil.copytree(trained["folder"], folder)
        config = json.loads((folder / "config.json").read_text())
        config["architecture"][key] = value
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(EffdetsegError, match=rf"config.json: record architecture.{key} = {value} is out of range"):
            read_model_file(folder)
