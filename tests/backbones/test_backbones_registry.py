import pytest
import torch
from torch import nn

from vqgan_lc.backbones import FeatureBackbone, available_backbones, build_backbone, register_backbone, wrap_module


def test_registry_lists_the_offline_and_paper_backbones():
    names = available_backbones()
    for name in ("efficientnet-lite0", "clip-vit-l14", "clip-vit-b16", "clip-rn50"):
        assert name in names


def test_unknown_backbone_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown backbone 'nope'; available: .*efficientnet-lite0") as err:
        build_backbone("nope")
    assert "\n" not in str(err.value)


def test_lite0_pretrained_gives_the_16x16_stride16_grid_at_256px():
    backbone = build_backbone("efficientnet-lite0")
    assert (backbone.name, backbone.layer, backbone.dim, backbone.input_size) == ("efficientnet-lite0", "stride16", 112, 256)
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        out = backbone(images)
    assert out.shape == (2, 112, 16, 16)
    # Different images give different features (the weights are really loaded and used).
    assert not torch.allclose(out[0], out[1])


def test_lite0_layer_option_and_size_checks():
    backbone = build_backbone("efficientnet-lite0", pretrained=False, layer="stride32")
    assert backbone.dim == 320
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 128, 128)).shape == (1, 320, 4, 4)
        with pytest.raises(ValueError, match="multiples of 32"):
            backbone(torch.zeros(1, 3, 100, 100))
    with pytest.raises(ValueError, match="unknown layer"):
        build_backbone("efficientnet-lite0", pretrained=False, layer="stride2")


def test_any_feature_map_module_can_be_wrapped_and_registered():
    module = nn.Conv2d(3, 5, kernel_size=8, stride=8)
    backbone = wrap_module(module, input_size=64, name="patchify")
    assert isinstance(backbone, FeatureBackbone)
    assert (backbone.dim, backbone.input_size, backbone.name) == (5, 64, "patchify")
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 64, 64)).shape == (2, 5, 8, 8)

    register_backbone("test-patchify", lambda weights=None, pretrained=True: wrap_module(module, input_size=64))
    assert "test-patchify" in available_backbones()
    assert build_backbone("test-patchify").dim == 5


def test_wrapped_module_must_return_a_feature_map():
    backbone = wrap_module(nn.Sequential(nn.Flatten()), input_size=8, dim=3)
    with pytest.raises(ValueError, match=r"must return a \(B, C, h, w\) feature map"):
        backbone(torch.zeros(1, 3, 8, 8))
