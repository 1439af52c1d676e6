"""The model zoo: structure, topology, fusion, budgets, any input size (the per-family tester is test_model_families.py)."""
from __future__ import annotations

import pytest
import torch

import effdetseg
from effdetseg.layers import ConvBn, FastNormalizedFusion
from effdetseg.models.bifpn import FpnLayer, fpn_topology
from effdetseg.models.complexity import model_complexity

# Forward/backward, odd sizes, save/load, prepare, predict and export of every family: test_model_families.py.


def build(name: str, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return effdetseg.create_model(name, num_classes=num_classes)


def test_list_models_has_every_variant() -> None:
    names = effdetseg.list_models()
    for phi in range(8):
        assert f"efficientdet_d{phi}_seg" in names
        assert f"efficientdet_d{phi}_seg_p2" in names
        assert f"efficientnet_b{phi}" in names
    assert "unet" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientdet_d0_seg", "efficientdet_d0_seg_p2"])
@pytest.mark.parametrize("shape", [(1, 3, 375, 500), (2, 3, 128, 128)])
@pytest.mark.parametrize("train", [True, False])
def test_logits_have_input_size(name: str, shape: tuple[int, ...], train: bool) -> None:
    model = build(name, num_classes=21).train(train)
    with torch.set_grad_enabled(train):
        logits = model(torch.randn(*shape))
    assert logits.shape == (shape[0], 21, *shape[2:])
    assert torch.isfinite(logits).all()


def test_padding_does_not_leak_into_crop() -> None:
    """The crop keeps the top-left input-sized region: the same image padded by hand gives the same logits there."""
    model = build("efficientdet_d0_seg").eval()
    x = torch.randn(1, 3, 100, 120)
    padded = torch.nn.functional.pad(x, (0, 128 - 120, 0, 128 - 100))
    with torch.no_grad():
        a, b = model(x), model(padded)[..., :100, :120]
    torch.testing.assert_close(a, b)


def test_bifpn_topology_is_generated_from_the_level_range() -> None:
    full = fpn_topology(2, 7)
    assert [n.level for n in full.nodes] == [6, 5, 4, 3, 2, 3, 4, 5, 6, 7]
    # Top-down nodes fuse two maps; bottom-up nodes three, except the top level (no top-down node there).
    assert [len(n.inputs) for n in full.nodes] == [2] * 5 + [3, 3, 3, 3, 2]
    for node in full.nodes:
        assert all(abs(full.level_of(i) - node.level) <= 1 for i in node.inputs)
    assert [full.level_of(i) for i in full.outputs] == list(range(2, 8))
    top_down = fpn_topology(2, 7, ("top_down",))
    assert [n.level for n in top_down.nodes] == [6, 5, 4, 3, 2]
    assert len(fpn_topology(3, 7).nodes) == 8  # the same generator serves EfficientDet's P3–P7
    with pytest.raises(ValueError):
        fpn_topology(5, 5)


def test_fpn_layer_projects_backbone_edges_in_the_first_layer_only() -> None:
    layer = FpnLayer(fpn_topology(2, 4), [8, 16, 8], channels=8, project_levels=(2, 3, 4))
    projected = [isinstance(edge.project, ConvBn) for node in layer.nodes for edge in node.edges]
    inputs = [i < 3 for node in layer.topology.nodes for i in node.inputs]
    assert projected == inputs  # every edge reading a backbone map has its own 1×1 conv + BN


def test_fusion_weights_stay_non_negative_and_normalized() -> None:
    fusion = FastNormalizedFusion(3)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w = fusion.normalized_weights().detach()
    assert (w >= 0).all() and w[1] == 0
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-3) and float(w.sum()) < 1.0
    maps = [torch.full((1, 1, 2, 2), v) for v in (1.0, 100.0, 3.0)]
    with torch.no_grad():
        fused = float(fusion(maps)[0, 0, 0, 0])
    assert fused == pytest.approx((2 * 1 + 0.5 * 3) / (2.5 + 1e-4), rel=1e-5)


@pytest.mark.slow
def test_fusion_weights_of_a_trained_model_are_normalized() -> None:
    model = build("efficientdet_d0_seg")
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)  # large steps push some weights negative
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 64, 64)).std().backward()
        optimizer.step()
    fusions = [m for m in model.modules() if isinstance(m, FastNormalizedFusion)]
    assert fusions
    for fusion in fusions:
        w = fusion.normalized_weights().detach()
        assert (w >= 0).all()
        assert float(w.sum()) <= 1.0 and (float(w.sum()) > 0.99 or float(w.sum()) == 0.0)


def test_p2_only_and_full_variants_differ_in_structure() -> None:
    full, p2 = build("efficientdet_d0_seg"), build("efficientdet_d0_seg_p2")
    assert full.top_down is not None and p2.top_down is None
    # The P2-only variant's last BiFPN layer stops after its top-down pathway (nothing else reaches P2).
    assert len(full.bifpn[-1].nodes) == 10 and len(p2.bifpn[-1].nodes) == 5
    assert len(full.top_down.nodes) == 5
    assert sum(p.numel() for p in full.parameters()) != sum(p.numel() for p in p2.parameters())


@pytest.mark.slow
def test_scaling_rule_grows_monotonically() -> None:
    sizes = [model_complexity(f"efficientdet_d{phi}_seg", (512, 512)) for phi in range(8)]
    params = [s["params"] for s in sizes]
    macs = [s["macs"] for s in sizes]
    assert params == sorted(params) and len(set(params)) == 8
    assert macs == sorted(macs) and len(set(macs)) == 8
    configs = [effdetseg.models.scaled_config(phi) for phi in range(8)]
    widths = [c.bifpn_channels for c in configs]
    assert widths == sorted(widths) and [c.backbone for c in configs] == [f"efficientnet_b{p}" for p in range(8)]


def test_d4_is_the_papers_model() -> None:
    config = effdetseg.models.scaled_config(4)
    assert (config.backbone, config.bifpn_channels, config.bifpn_layers) == ("efficientnet_b4", 128, 3)
    assert (config.head_channels, config.head_layers, config.min_level, config.max_level) == (256, 3, 2, 7)
    size = model_complexity("efficientdet_d4_seg", (512, 512), num_classes=21)
    assert 17e6 * 0.9 <= size["params"] <= 17e6 * 1.1, size
    assert 12e9 <= size["macs"] <= 20e9, size


def test_any_timm_backbone() -> None:
    model = effdetseg.create_model("efficientdet_d0_seg", num_classes=3, backbone="mobilenetv3_large_100").eval()
    assert model.model_config == {"name": "efficientdet_d0_seg", "num_classes": 3, "backbone": "mobilenetv3_large_100"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 90)).shape == (1, 3, 70, 90)


def test_bad_names_and_overrides_fail_clearly() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        effdetseg.create_model("efficientdet_d0_seg", backbone="no_such_net")
    with pytest.raises(TypeError, match="unknown override"):
        effdetseg.create_model("efficientdet_d0_seg", bifpn_chanels=8)
    with pytest.raises(ValueError, match="unknown model"):
        effdetseg.create_model("efficientdet_d9_seg")


def test_upsampler_starts_as_bilinear_and_stays_narrow() -> None:
    from effdetseg.models.efficientdet_seg import TransposedConvUpsampler

    up = TransposedConvUpsampler(3, stride=2)
    x = torch.randn(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    model = build("efficientdet_d0_seg", num_classes=21)
    # Nothing wider than the class count runs above stride 4.
    assert [m.in_channels for m in model.upsample] == [21, 21]
    assert all(m.groups == 21 for m in model.upsample)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientdet_d0_seg", "efficientdet_d0_seg_p2"])
def test_torchscript_scripting_matches_eager(name: str) -> None:
    model = build(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = build("efficientdet_d0_seg").train()
    x = torch.randn(2, 3, 96, 128)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)
        model(x).square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.bifpn[0].grad_checkpointing and model.head.grad_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_multi_level_head_and_decoder_batchnorm_momentum_options() -> None:
    tiny = dict(backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16, head_layers=1)
    plain = effdetseg.create_model("efficientdet_d0_seg", num_classes=3, **tiny)
    multi = effdetseg.create_model("efficientdet_d0_seg", num_classes=3, head_levels=4, bn_momentum=0.01, **tiny)
    # The fusion of P2–P5 adds only its 4 weights; P2 starts with twice the others' weight.
    assert sum(p.numel() for p in multi.parameters()) - sum(p.numel() for p in plain.parameters()) == 4
    assert multi.level_fusion.fuse.weight.tolist() == [2.0, 1.0, 1.0, 1.0]
    momenta = {name.split(".")[0]: m.momentum for name, m in multi.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta["bifpn"] == momenta["head"] == 0.01 and momenta["backbone"] == 0.1  # the backbone keeps its own
    x = torch.randn(1, 3, 70, 90)
    multi.eval()
    assert multi(x).shape == (1, 3, 70, 90)
    for bad, message in [({"head_levels": 7}, "head_levels must be 1"), ({"bn_momentum": 0.0}, "bn_momentum"),
                         ({"alignment": "centre"}, "alignment must be"), ({"decoder_init": "zeros"}, "decoder_init must be")]:
        with pytest.raises(ValueError, match=message):
            effdetseg.create_model("efficientdet_d0_seg", num_classes=3, **tiny, **bad)


def test_identity_decoder_init_passes_each_level_through() -> None:
    """``decoder_init="identity"``: every node starts as BN(swish(fusion)) favouring its own level,
    so the first layer's nodes at P5 and up equal the normalised swish of their weighted inputs."""
    tiny = dict(backbone="mobilenetv3_small_050", bifpn_channels=16, head_channels=16, head_layers=1)
    torch.manual_seed(0)
    model = effdetseg.create_model("efficientdet_d0_seg", num_classes=3, decoder_init="identity", **tiny).eval()
    node = model.bifpn[0].nodes[0]  # top-down P6: its own P6 input and P7 from above
    assert node.fuse.weight.tolist() == [2.0, 1.0]
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(node.conv(x), x)  # the separable conv is the identity
    projection = model.bifpn[0].nodes[7].edges[0].project.conv.weight.flatten(1)  # bottom-up P5's C5 edge: 16 × C5
    torch.testing.assert_close(projection @ projection.T, torch.eye(16), atol=1e-5, rtol=0)
    default = effdetseg.create_model("efficientdet_d0_seg", num_classes=3, **tiny)
    assert default.bifpn[0].nodes[0].fuse.weight.tolist() == [1.0, 1.0]  # the paper's start stays the default
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert node.conv.depthwise.weight.grad is not None
