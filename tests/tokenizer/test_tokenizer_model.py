import pytest
import torch

from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig, get_preset, PRESETS
from vqgan_lc.tokenizer.model import VQModel
from vqgan_lc.quantize import QuantizerConfig


def tiny_config(kind="lc", **q):
    ae = AutoencoderConfig(resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                           attn_resolutions=(8,), z_channels=16, norm_groups=8)
    qc = dict(kind=kind, codebook_size=64, dim=4)
    if kind == "lc":
        qc["codebook_dim"] = 12
    qc.update(q)
    return TokenizerConfig(ae, QuantizerConfig(**qc))


@pytest.mark.parametrize("kind", ["lc", "vq", "fc", "ema"])
def test_forward_shapes_and_decode_indices_equals_decode_quantized(kind):
    torch.manual_seed(0)
    model = VQModel(tiny_config(kind)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(x)
        enc = model.encode(x)
        assert out.reconstruction.shape == x.shape
        assert enc.indices.shape == (2, 8, 8) and model.token_grid() == (8, 8)
        assert enc.latents.shape == (2, 4, 8, 8)
        assert torch.equal(model.decode_indices(enc.indices), model.decode(enc.quantized))
        torch.testing.assert_close(model.decode(enc.quantized), out.reconstruction)
        snapped = model.snap_latents(enc.latents)
        assert torch.equal(snapped.indices, enc.indices) and torch.equal(snapped.quantized, enc.quantized)
        assert torch.equal(model.decode_latents(enc.latents), model.decode(enc.quantized))
        flat = enc.indices.flatten(1)  # (B, h*w) raster order, as generators produce them
        assert torch.equal(model.decode_indices(flat), model.decode_indices(enc.indices))
        assert torch.equal(model.decode_indices(flat, grid=(8, 8)), model.decode_indices(enc.indices))


def test_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = VQModel(tiny_config()).train()
    out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    (out.reconstruction.abs().mean() + out.quantizer.loss).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_bad_image_shapes():
    model = VQModel(tiny_config())
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        model.decode_indices(torch.zeros(4, 4, dtype=torch.long))


def test_paper_f16_100k_parameter_count():
    # Paper Table 8: 71.72M trainable parameters (frozen codebook not counted).
    model = VQModel.from_preset("vqgan-lc-f16-100k")
    n = model.num_trainable_parameters()
    assert 71.7e6 <= n <= 71.8e6, n
    assert model.quantizer.codebook.shape == (100_000, 768)
    assert model.token_grid() == (16, 16)


def test_f8_preset_grid_and_presets_build():
    cfg = get_preset("vqgan-lc-f8-100k")
    assert cfg.autoencoder.downsample_factor == 8 and cfg.quantizer.dim == 4
    for name in PRESETS:
        get_preset(name).quantizer.validate()
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        get_preset("nope")


def test_state_dict_layout_follows_reference_names():
    keys = set(VQModel.from_preset("vqgan-lc-tiny").state_dict())
    for key in ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.mid.attn_1.q.weight",
                "decoder.up.1.upsample.conv.weight", "decoder.conv_out.weight", "quant_conv.weight",
                "post_quant_conv.weight", "quantizer.codebook", "quantizer.projector.weight"]:
        assert key in keys, key


def test_outputs_unpack_in_documented_order():
    from vqgan_lc.quantize import QuantizerOutput

    torch.manual_seed(0)
    model = VQModel(tiny_config()).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        enc = model.encode(x)
        latents, quantized, indices = enc
        assert latents is enc.latents and quantized is enc.quantized and indices is enc.indices
        assert len(enc) == 3 and enc[2] is enc.indices
        out = model(x)
        reconstruction, latents2, quantizer_out = out
        assert reconstruction is out.reconstruction and latents2 is out.latents
        assert isinstance(quantizer_out, QuantizerOutput) and torch.equal(quantizer_out.indices, indices)
        assert reconstruction.shape == x.shape and torch.equal(latents2, latents)
        snapped_latents, snapped, snapped_indices = model.snap_latents(latents)
        assert torch.equal(snapped_indices, indices) and torch.equal(snapped, quantized)


def test_device_and_dtype_follow_to():
    model = VQModel(tiny_config())
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    model = model.to(torch.float64).eval()
    assert model.dtype == torch.float64 and model.device.type == "cpu"
    with torch.no_grad():
        recon = model(torch.rand(1, 3, 32, 32, dtype=torch.float64) * 2 - 1).reconstruction
    assert recon.dtype == torch.float64


def test_torch_compile_matches_eager_without_graph_breaks_in_the_networks():
    """The tiny preset compiled with the cheap "eager" backend (no code generation on CPU).

    encode_latents, decode and decode_indices compile with fullgraph=True: no validation step
    breaks their graphs (the index-range check is skipped while compiling). `encode` as a whole
    cannot be one graph: the nearest-entry search runs scipy/faiss on the host and `bincount`
    has a data-dependent size, so it compiles with breaks at the search and is compared too."""
    torch.manual_seed(0)
    config = get_preset("vqgan-lc-tiny").override(["quantizer.codebook_size=256"])
    model = VQModel(config, torch.randn(256, config.quantizer.codebook_dim)).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            # decode_indices first, while the eval-mode projected codebook is not cached yet
            indices = torch.randint(0, 256, (2, 8, 8), generator=torch.Generator().manual_seed(1))
            compiled_decode_indices = torch.compile(model.decode_indices, backend="eager", fullgraph=True)
            torch.testing.assert_close(compiled_decode_indices(indices), model.decode_indices(indices))
            latents = torch.compile(model.encode_latents, backend="eager", fullgraph=True)(x)
            torch.testing.assert_close(latents, model.encode_latents(x))
            enc = torch.compile(model.encode, backend="eager")(x)
            eager = model.encode(x)
            assert torch.equal(enc.indices, eager.indices)
            torch.testing.assert_close(enc.quantized, eager.quantized)
            torch.testing.assert_close(torch.compile(model.decode, backend="eager", fullgraph=True)(enc.quantized),
                                       model.decode(eager.quantized))
    finally:
        torch._dynamo.reset()


def test_a_codebook_file_builds_the_same_model_as_its_tensor_and_leaves_the_given_config_alone(tmp_path):
    """The tokenizer reads the file (codebook/ is below it; the quantizer takes tensors): its
    shape sets the model's N and C on a copy, and its metadata becomes the model's provenance."""
    from vqgan_lc.codebook import save_codebook

    vectors = torch.randn(50, 10)
    save_codebook(tmp_path / "cb.safetensors", vectors, {"backbone": "test", "k": 50})
    given = tiny_config()
    from_file = VQModel(given, str(tmp_path / "cb.safetensors"))
    from_tensor = VQModel(tiny_config(), vectors)
    assert torch.equal(from_file.quantizer.codebook, from_tensor.quantizer.codebook)
    assert (from_file.config.quantizer.codebook_size, from_file.config.quantizer.codebook_dim) == (50, 10)
    assert from_file.config.quantizer is from_file.quantizer.config
    assert (given.quantizer.codebook_size, given.quantizer.codebook_dim) == (64, 12)
    assert from_file.gather_provenance()["codebook"]["backbone"] == "test"
