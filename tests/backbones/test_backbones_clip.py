"""CLIP feature paths, checked on randomly initialised models of the real layouts."""
import pytest
import torch

pytest.importorskip("transformers")

from vqgan_lc.backbones import build_backbone  # noqa: E402
from vqgan_lc.backbones.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from vqgan_lc.backbones.clip_resnet import ModifiedResNet  # noqa: E402


@pytest.fixture(autouse=True)
def offline_empty_cache(tmp_path, monkeypatch):
    # No network and no cached weights: only what a test passes explicitly is found.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("VQGAN_LC_CLIP_VIT_L14", "VQGAN_LC_CLIP_VIT_B16", "VQGAN_LC_CLIP_RN50"):
        monkeypatch.delenv(var, raising=False)


def _shallow(name):
    torch.manual_seed(0)
    return build_backbone(name, pretrained=False, num_hidden_layers=1)


def test_vit_l14_patch_tokens_after_final_norm_and_projection():
    backbone = _shallow("clip-vit-l14")
    assert (backbone.dim, backbone.input_size) == (768, 224)
    assert "post_layernorm" in backbone.layer and "visual_projection" in backbone.layer
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        features = backbone(images)
        assert features.shape == (1, 768, 16, 16)  # 224 / 14 = 16: CLS dropped
        # Same layer as CLIP's own image embedding: the CLS token through the same
        # norm + projection equals `image_embeds` of the transformers model.
        pixels = ((images + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        model = backbone.model
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state
        assert tokens.shape[1] == 1 + 16 * 16 and tokens.shape[2] == 1024
        projected = model.visual_projection(model.vision_model.post_layernorm(tokens))
        assert torch.allclose(projected[:, 0], model(pixel_values=pixels).image_embeds, atol=1e-5)
        # Raster order: grid cell (row r, col c) is patch token 1 + r * 16 + c.
        assert torch.equal(features[:, :, 2, 5], projected[:, 1 + 2 * 16 + 5])


def test_vit_b16_grid_and_resizing_of_other_sizes():
    backbone = _shallow("clip-vit-b16")
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 14, 14)
        assert backbone(torch.zeros(1, 3, 256, 256)).shape == (1, 512, 14, 14)


def test_missing_clip_weights_say_how_to_supply_them():
    with pytest.raises(RuntimeError, match=r"--backbone-weights .*\$VQGAN_LC_CLIP_VIT_L14") as err:
        build_backbone("clip-vit-l14")
    assert "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match=r"--backbone-weights FILE .*\$VQGAN_LC_CLIP_RN50"):
        build_backbone("clip-rn50")


def test_vit_weights_load_from_a_local_folder(tmp_path):
    source = _shallow("clip-vit-b16")
    source.model.save_pretrained(tmp_path / "clip")
    loaded = build_backbone("clip-vit-b16", str(tmp_path / "clip"))
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(images), source(images), atol=1e-5)
    with pytest.raises(RuntimeError, match="different CLIP ViT"):
        build_backbone("clip-vit-l14", str(tmp_path / "clip"))


def test_rn50_feature_grids():
    backbone = build_backbone("clip-rn50", pretrained=False)
    assert (backbone.dim, backbone.layer, backbone.input_size) == (2048, "layer4", 224)
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 2048, 7, 7)
        assert backbone.model(torch.zeros(1, 3, 224, 224), "layer3").shape == (1, 1024, 14, 14)
    with pytest.raises(ValueError, match="unknown layer"):
        build_backbone("clip-rn50", pretrained=False, layer="layer2")


def test_rn50_loads_an_openai_style_state_dict(tmp_path):
    torch.manual_seed(1)
    source = ModifiedResNet().eval()
    state = {f"visual.{k}": v for k, v in source.state_dict().items()}
    state["visual.attnpool.positional_embedding"] = torch.zeros(50, 2048)  # the head is ignored
    state["transformer.resblocks.0.ln_1.weight"] = torch.ones(512)  # text tower too
    torch.save(state, tmp_path / "RN50.pt")
    backbone = build_backbone("clip-rn50", str(tmp_path / "RN50.pt"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1  # fully convolutional: a small input checks the weights
    with torch.no_grad():
        assert torch.allclose(backbone.model(x), source(x), atol=1e-5)
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="not a CLIP RN50 checkpoint"):
        build_backbone("clip-rn50", str(tmp_path / "bad.pt"))


@pytest.mark.slow
def test_full_vit_l14_layout_output_shape():
    backbone = build_backbone("clip-vit-l14", pretrained=False)
    assert backbone.model.config.num_hidden_layers == 24 and backbone.model.config.hidden_size == 1024
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 768, 16, 16)
