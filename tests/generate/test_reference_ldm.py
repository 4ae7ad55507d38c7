"""LDM-LC: a LatentDiffusion checkpoint in the reference layout converts to our UNet (EMA weights,
32-channel heads, GroupNorm eps 1e-5) with outputs equal to openaimodel's, and samples with LDM's
DDIM (grid 1, 1 + T/S, ..., eta 1, last step ending on alpha_bar of step 0)."""
import json
import warnings

import pytest
import torch

from reference_layouts import reference_tokenizer_state, tokenizer_config, unet_forward, unet_state
from vqgan_lc.generate.reference import convert_reference, reference_protocol, sample_reference
from vqgan_lc.generate.unet import UNet, unet_config
from vqgan_lc.pretrained import load_pretrained

IN, MC, MULT, RES, CTX, CLASSES, SIDE = 4, 32, (1, 2), 1, 16, 5, 8
ATTENTION = (1, 2, 4)           # 4 is never reached by a two-level UNet (the f16 yaml lists one such level)


def _checkpoint(seed=0):
    """What LatentDiffusion saves: model.diffusion_model.*, its LitEma copy model_ema.* (names without
    dots), cond_stage_model (ClassEmbedder), first_stage_model (the tokenizer) and schedule buffers."""
    raw = unet_state(IN, MC, MULT, RES, ATTENTION, CTX, seed=seed)
    ema = unet_state(IN, MC, MULT, RES, ATTENTION, CTX, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    state = {"model.diffusion_model." + k: v for k, v in raw.items()}
    state.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in ema.items()})
    state.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(10),
                  "cond_stage_model.embedding.weight": torch.randn(CLASSES + 1, CTX, generator=g),
                  "betas": torch.linspace(0.0015, 0.0195, 1000), "scale_factor": torch.tensor(1.0)})
    tok = reference_tokenizer_state(tokenizer_config(resolution=16, ch_mult=(1, 2), dim=IN))   # f2: 8x8 latents
    state.update({"first_stage_model." + k: v for k, v in tok.items()})
    return {"state_dict": state, "epoch": 3, "global_step": 1000}, raw, ema


def _yaml(tmp_path):
    text = f"""model:
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    unet_config:
      params:
        image_size: {SIDE}
        in_channels: {IN}
        out_channels: {IN}
        model_channels: {MC}
        attention_resolutions: [4, 2, 1]
        num_res_blocks: {RES}
        channel_mult: [1, 2]
        num_head_channels: 32
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: {CTX}
"""
    path = tmp_path / "imagenet-f16-vqgan-lc-100K.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ldm")
    checkpoint, raw, ema = _checkpoint()
    torch.save(checkpoint, tmp / "ldm-lc-f16.pth")
    with pytest.warns(UserWarning, match=r"attention_resolutions \[4\]"):
        process = convert_reference("ldm", tmp / "ldm-lc-f16.pth", tmp / "out", config=_yaml(tmp))
    return tmp, checkpoint, raw, ema, process


def test_outputs_equal_openaimodel_with_the_ema_weights(converted):
    tmp, checkpoint, raw, ema, process = converted
    model = load_pretrained(tmp / "out/generator")
    assert isinstance(model, UNet) and model.config.num_head_channels == 32 and model.config.norm_eps == 1e-5
    assert process["source"]["weights"].startswith("model_ema")
    g = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(3, IN, SIDE, SIDE, generator=g), torch.tensor([996.0, 501.0, 1.0]), torch.tensor([0, 4, 5])
    context = checkpoint["state_dict"]["cond_stage_model.embedding.weight"][y][:, None]
    expected = unet_forward(ema, x, t, context)
    assert torch.allclose(model(x, t, y), expected, atol=1e-5, rtol=0), (model(x, t, y) - expected).abs().max()
    assert not torch.allclose(model(x, t, y), unet_forward(raw, x, t, context), atol=1e-3)


def test_folder_holds_the_tokenizer_and_the_protocol(converted):
    tmp, checkpoint, *_ = converted
    tokenizer = load_pretrained(tmp / "out/tokenizer")
    assert tokenizer.config.autoencoder.resolution == 16 and tokenizer.config.quantizer.dim == IN
    process = json.loads((tmp / "out/process.json").read_text())
    sampling = process["sampling"]
    assert (sampling["sampler"], sampling["steps"], sampling["eta"], sampling["guided_channels"]) == ("ddim", 200, 1.0,
                                                                                                      None)
    assert sampling["guidance_scale"] == 1.4      # the tokenizer is not f16: the f8 setting of runTestLDM.sh
    assert reference_protocol("ldm", downsample=16)["guidance_scale"] == 1.6


def test_config_read_from_the_weights_matches_the_yaml(tmp_path):
    checkpoint, raw, ema = _checkpoint(seed=5)
    torch.save(checkpoint, tmp_path / "ldm.pth")
    convert_reference("ldm", tmp_path / "ldm.pth", tmp_path / "out")          # no yaml: shapes and the tokenizer
    model = load_pretrained(tmp_path / "out/generator")
    assert model.config.channel_mult == MULT and model.config.attention_resolutions == (1, 2)
    assert model.config.num_head_channels == 32 and model.config.num_res_blocks == RES
    # the image size is in neither the weights nor the tokenizer's: the paper's 256 px is assumed
    assert model.config.input_size == 256 // 2
    assert load_pretrained(tmp_path / "out/tokenizer").config.autoencoder.resolution == 256
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, IN, SIDE, SIDE, generator=g), torch.tensor([5.0, 700.0]), torch.tensor([2, 0])
    context = checkpoint["state_dict"]["cond_stage_model.embedding.weight"][y][:, None]
    assert torch.allclose(model(x, t, y), unet_forward(ema, x, t, context), atol=1e-5, rtol=0)


def test_reference_ddim_equals_ldm_ddim_step_by_step(converted):
    tmp, checkpoint, raw, ema, _ = converted
    model = load_pretrained(tmp / "out/generator")
    labels = torch.tensor([1, 3])
    noise = torch.randn(2, IN, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    steps = 4
    ours = sample_reference(model, "ldm", labels, noise=noise, generator=torch.Generator().manual_seed(11),
                            steps=steps)
    # ldm/models/diffusion/ddim.py with make_ddim_timesteps("uniform") and make_ddim_sampling_parameters
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    bar = torch.cumprod(1 - betas, 0)
    grid = torch.arange(0, 1000, 1000 // steps) + 1
    a, a_prev = bar[grid], torch.cat([bar[:1], bar[grid[:-1]]])
    sigma = 1.0 * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    table = checkpoint["state_dict"]["cond_stage_model.embedding.weight"]
    g, x = torch.Generator().manual_seed(11), noise
    for index in reversed(range(steps)):
        t = torch.full((2,), float(grid[index]))
        e_c = unet_forward(ema, x, t, table[labels][:, None])
        e_u = unet_forward(ema, x, t, table[torch.full_like(labels, CLASSES)][:, None])
        e = e_u + 1.6 * (e_c - e_u)
        at, ap, st = float(a[index]), float(a_prev[index]), float(sigma[index])
        x0 = (x - (1 - at) ** 0.5 * e) / at ** 0.5
        x = ap ** 0.5 * x0 + (1 - ap - st ** 2) ** 0.5 * e + st * torch.randn(x.shape, generator=g)
    assert float(sigma[0]) > 0                                                 # the last step adds noise too
    assert (ours - x).abs().max() <= 1e-5 * x.abs().max(), (ours - x).abs().max()


def test_unreachable_attention_levels_warn_and_are_ignored():
    with pytest.warns(UserWarning, match="not downsample factors"):
        config = unet_config("ldm-tiny", in_channels=4, input_size=8, num_classes=3, attention_resolutions=(2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UNet(config)
    assert sum(1 for m in model.modules() if type(m).__name__ == "SpatialTransformer") > 0


def test_heads_per_level_from_num_head_channels():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = unet_config("ldm-tiny", in_channels=4, input_size=8, num_classes=3, model_channels=32,
                             norm_groups=32, num_head_channels=16, attention_resolutions=(1, 2))
    heads = [m.block.attn1.heads for m in UNet(config).modules() if type(m).__name__ == "SpatialTransformer"]
    assert set(heads) == {2, 4}                      # widths 32 and 64 at 16 channels per head
