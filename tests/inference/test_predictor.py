"""effdetseg.Predictor: loading, preprocessing, batching, label maps and probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdetseg import create_model, save_model
from effdetseg.errors import EffdetsegError
from effdetseg.inference.backends import detect_format
from effdetseg.inference.predictor import Predictor
from effdetseg.inference.segment import preprocess
from effdetseg.io.record import IMAGENET_MEAN, Preprocessing
from conftest import SHARED_DATA, DominantChannel, halves

VOC_IMAGE = SHARED_DATA / "voc2012_sample" / "JPEGImages" / "2007_000033.jpg"


@pytest.fixture(scope="module")
def d0_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=5, bifpn_channels=16, head_channels=16)
    path = tmp_path_factory.mktemp("ckpt") / "d0.pth"
    save_model(model, path)
    return path


def test_label_maps_have_original_size_and_right_classes() -> None:
    predictor = Predictor(DominantChannel(), device="cpu", resolution=32)
    image = halves(50, 70)
    labels = predictor.predict(image)
    assert labels.shape == (50, 70) and labels.dtype == np.uint8
    # Away from the boundary the class is exact; resizing to 32×32 and back blurs one pixel or two.
    assert (labels[:, :30] == 0).all() and (labels[:, 40:] == 2).all()


def test_batch_equals_one_by_one_and_probabilities_sum_to_one() -> None:
    predictor = Predictor(DominantChannel(), device="cpu", resolution=24, keep_aspect=True, batch_size=2)
    # Two images share a resized size (one forward pass), the others do not.
    images = [halves(40, 60), halves(33, 33)[:, ::-1].copy(), halves(60, 40), halves(40, 60)[::-1].copy()]
    labels, probabilities = predictor.predict(images, return_probabilities=True)
    assert [lab.shape for lab in labels] == [(40, 60), (33, 33), (60, 40), (40, 60)]
    for image, lab, prob in zip(images, labels, probabilities):
        assert np.array_equal(lab, predictor.predict(image))
        assert prob.shape == (3, *image.shape[:2]) and prob.dtype == np.float32
        np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
        assert np.array_equal(prob.argmax(0), lab)
    assert (labels[1][:, :10] == 2).all()  # the mirrored image is blue on the left


def test_inputs_path_pil_and_array_agree() -> None:
    predictor = Predictor(DominantChannel(), device="cpu", resolution=0)
    array = halves(20, 30)
    from_pil = predictor.predict(Image.fromarray(array))
    assert np.array_equal(from_pil, predictor.predict(array))
    assert (from_pil[:, :15] == 0).all() and (from_pil[:, 15:] == 2).all()  # resolution 0: no resizing
    with pytest.raises(TypeError, match="uint8"):
        predictor.predict(array.astype(np.float32))


def test_preprocessing_normalizes_with_given_mean_std() -> None:
    image = np.full((8, 8, 3), 255, dtype=np.uint8)
    x = preprocess(image, Preprocessing((4, 6), "fixed", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert x.shape == (1, 3, 4, 6)
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_checkpoint_prediction_matches_the_model(d0_checkpoint: Path) -> None:
    if not VOC_IMAGE.is_file():
        pytest.skip(f"real sample image missing: {VOC_IMAGE}")
    predictor = Predictor(d0_checkpoint, device="cpu", resolution=64)
    assert predictor.backend == "torch" and predictor.num_classes == 5
    assert predictor.preprocessing.mean == IMAGENET_MEAN  # the backbone's timm pretrained_cfg
    image = np.array(Image.open(VOC_IMAGE).convert("RGB"))
    labels, probabilities = predictor.predict(str(VOC_IMAGE), return_probabilities=True)
    assert labels.shape == image.shape[:2]
    # The same pipeline by hand: resize, normalize, forward, resize logits back, argmax.
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = predictor.model(x)
    logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear")
    expected = logits.softmax(1)[0].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


@pytest.mark.slow
def test_checkpoint_preprocessing_and_labels_are_used(tmp_path: Path) -> None:
    model = create_model("efficientdet_d0_seg", num_classes=3, bifpn_channels=16, head_channels=16)
    # What effdetseg 0.1.0's `train` stored next to the weights (still read).
    state = {
        "model_config": model.model_config,
        "model": model.state_dict(),
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "input_size": [96, 128],
        "labels": {"names": ["sky", "road", "car"], "colors": [[0, 0, 255], [128, 64, 128], [255, 0, 0]]},
    }
    path = tmp_path / "best.pth"
    torch.save(state, path)
    predictor = Predictor(path, device="cpu")
    assert predictor.preprocessing.mean == (0.5, 0.5, 0.5) and predictor.preprocessing.std == (0.5, 0.5, 0.5)
    assert predictor.preprocessing.size == (96, 128)
    assert predictor.labels.names == ("sky", "road", "car") and predictor.labels.colors[2] == (255, 0, 0)
    assert Predictor(path, device="cpu", resolution=64).preprocessing.size == (64, 64)
    # A resolved training config (data.normalize, data.preprocessing) is read too.
    del state["normalize"], state["input_size"], state["labels"]
    state["config"] = {"data": {"normalize": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]},
                                "preprocessing": {"resize_height": 64, "resize_width": 80}}}
    torch.save(state, path)
    predictor = Predictor(path, device="cpu")
    assert predictor.preprocessing.mean == (0.1, 0.2, 0.3) and predictor.preprocessing.size == (64, 80)
    assert predictor.labels is None


@pytest.mark.slow
def test_bare_state_dict_needs_name_and_checks_classes(tmp_path: Path, d0_checkpoint: Path) -> None:
    model = create_model("efficientdet_d0_seg", num_classes=4)
    bare = tmp_path / "model.pth"  # the original project's format: a state dict and nothing else
    torch.save(model.state_dict(), bare)
    with pytest.raises(EffdetsegError, match="bare state dict"):
        Predictor(bare, device="cpu")
    predictor = Predictor(bare, device="cpu", model_name="efficientdet_d0_seg", num_classes=4, resolution=32)
    assert predictor.predict(halves(20, 20)).shape == (20, 20)
    with pytest.raises(EffdetsegError, match="4 classes, the model 21"):
        Predictor(bare, device="cpu", model_name="efficientdet_d0_seg", num_classes=21)
    with pytest.raises(EffdetsegError, match="checkpoint has 5 classes, but num_classes is 21"):
        Predictor(d0_checkpoint, device="cpu", num_classes=21)
    with pytest.raises(EffdetsegError, match="not efficientdet_d1_seg"):
        Predictor(d0_checkpoint, device="cpu", model_name="efficientdet_d1_seg")
    with pytest.raises(EffdetsegError, match="model file not found"):
        Predictor(tmp_path / "missing.pth", device="cpu")
    assert detect_format(bare) == "torch" and detect_format(tmp_path / "m.onnx") == "onnx"


def test_classifier_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classifier.safetensors"
    save_model(create_model("efficientnet_b0", num_classes=10), path)
    with pytest.raises(EffdetsegError, match="not a segmentation model"):
        Predictor(path, device="cpu")
