"""One tester for every architecture family (as segmentation_models_pytorch's BaseModelTester):
forward/backward, odd input sizes, save/load, prepare_for_inference, predict and export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import effdetseg
from effdetseg import Predictor, load_model, prepare_for_inference, save_model
from effdetseg.cli import main as cli


class BaseModelTester:
    """Subclasses name one small member of a family; the zoo's families differ in structure, not in code paths."""

    model_name: str
    num_classes = 5

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return effdetseg.create_model(self.model_name, num_classes=self.num_classes)

    @pytest.mark.slow
    def test_forward_backward_reaches_every_parameter(self) -> None:
        model = self.build().train()
        logits = model(torch.randn(2, 3, 64, 96))
        assert logits.shape == (2, self.num_classes, 64, 96)
        logits.logsumexp(1).mean().backward()
        # No dead branches: DDP without find_unused_parameters needs every parameter to get a gradient.
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused, unused

    def test_odd_input_size(self) -> None:
        model = self.build().eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 37, 53)).shape == (1, self.num_classes, 37, 53)

    @pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
    def test_save_load_round_trip(self, tmp_path: Path, suffix: str) -> None:
        model = self.build().eval()
        path = tmp_path / f"model{suffix}"
        save_model(model, path)
        restored = load_model(path)
        assert restored.model_config == model.model_config
        x = torch.randn(1, 3, 40, 56)
        with torch.no_grad():
            torch.testing.assert_close(restored(x), model(x))

    def test_prepared_model_gives_the_same_logits(self) -> None:
        model = self.build().eval()
        _randomize_batchnorm(model)
        prepared = prepare_for_inference(model, "cpu")
        assert prepared is not model and model.training is False
        def batchnorms(module: torch.nn.Module) -> int:
            return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())

        assert batchnorms(prepared) < batchnorms(model)  # folded into the convolutions; the original keeps its BN
        x = torch.randn(2, 3, 45, 70)
        with torch.inference_mode():
            expected, actual = model(x), prepared(x.contiguous(memory_format=torch.channels_last))
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    def test_predict_label_maps(self, tmp_path: Path) -> None:
        path = tmp_path / "model.safetensors"
        save_model(self.build(), path)
        image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
        labels, probabilities = Predictor(path, device="cpu", resolution=64).predict(image, return_probabilities=True)
        assert labels.shape == (50, 70) and labels.max() < self.num_classes
        assert probabilities.shape == (self.num_classes, 50, 70)
        assert np.array_equal(probabilities.argmax(0), labels)

    @pytest.mark.slow
    def test_export_onnx_runs_like_pytorch(self, tmp_path: Path, capsys) -> None:
        checkpoint = tmp_path / "model.pth"
        save_model(self.build(), checkpoint)
        output = tmp_path / "model.onnx"
        assert cli(["export", "--checkpoint", str(checkpoint), "--output", str(output), "--resolution", "64"]) == 0
        printed = capsys.readouterr().out
        assert "a generated scene" in printed and printed.count("% ok") == 2
        image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
        onnx_labels = Predictor(output, device="cpu").predict(image)
        torch_labels = Predictor(checkpoint, device="cpu", resolution=64).predict(image)
        assert (onnx_labels == torch_labels).mean() >= 0.999


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    """Trained-looking BN statistics: with the defaults (mean 0, var 1) folding is nearly a no-op."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


class TestEfficientDetSeg(BaseModelTester):
    model_name = "efficientdet_d0_seg"


class TestEfficientDetSegP2(BaseModelTester):
    model_name = "efficientdet_d0_seg_p2"


class TestUNet(BaseModelTester):
    model_name = "unet"
