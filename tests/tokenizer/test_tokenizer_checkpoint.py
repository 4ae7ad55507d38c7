import json

import pytest
import torch
from safetensors.torch import save_file

from vqgan_lc.tokenizer.checkpoint import export_for_inference
from vqgan_lc.tokenizer.reference import (convert_reference_state_dict, load_reference_checkpoint,
                                          model_from_reference_state)
from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
from vqgan_lc.tokenizer.model import VQModel
from test_tokenizer_model import tiny_config


def _images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("kind", ["lc", "ema"])
def test_save_load_round_trip_identical(tmp_path, kind):
    torch.manual_seed(0)
    model = VQModel(tiny_config(kind)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = VQModel.from_pretrained(tmp_path / "ckpt")
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x).reconstruction, loaded(x).reconstruction)
        assert torch.equal(model.encode(x).indices, loaded.encode(x).indices)


def test_inference_export_is_small_and_identical(tmp_path):
    torch.manual_seed(0)
    model = VQModel(tiny_config("lc", codebook_size=500, codebook_dim=96)).eval()
    exported = export_for_inference(model)
    assert exported.quantizer.codebook.shape == (500, 4)
    x = _images()
    with torch.no_grad():
        assert torch.equal(model.encode(x).indices, exported.encode(x).indices)
        torch.testing.assert_close(model(x).reconstruction, exported(x).reconstruction)
    model.save_pretrained(tmp_path / "full")
    exported.save_pretrained(tmp_path / "small")
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    small = (tmp_path / "small" / "model.safetensors").stat().st_size
    assert full - small > 0.9 * 500 * 96 * 4  # the (N, C) codebook is gone
    torch.testing.assert_close(VQModel.from_pretrained(tmp_path / "small")(x).reconstruction,
                               exported(x).reconstruction)


def test_paper_scale_export_size():
    # 100,000 x 768 fp32 (~307 MB) -> 100,000 x 8 (~3.2 MB)
    from vqgan_lc.quantize import QuantizerConfig, build_quantizer
    q = build_quantizer(QuantizerConfig(codebook_size=100_000, dim=8, codebook_dim=768))
    assert q.codebook.numel() * 4 / 1e6 == pytest.approx(307.2)
    assert q.latent_codebook().numel() * 4 / 1e6 == pytest.approx(3.2)


def test_load_errors_are_one_line(tmp_path):
    model = VQModel(tiny_config())
    with pytest.raises(FileNotFoundError, match="not a folder"):
        VQModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        VQModel.from_pretrained(tmp_path / "empty")
    model.save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        VQModel.from_pretrained(tmp_path / "a")
    # a config from another model
    model.save_pretrained(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds a 'bert' model"):
        VQModel.from_pretrained(tmp_path / "b")
    # a codebook of the wrong width
    model.save_pretrained(tmp_path / "c")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["quantizer.codebook"] = torch.zeros(64, 13)
    save_file(state, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match="codebook of the wrong size/width"):
        VQModel.from_pretrained(tmp_path / "c")
    # weights from another architecture
    other = VQModel(tiny_config("vq"))
    other.save_pretrained(tmp_path / "d")
    model.save_pretrained(tmp_path / "e")
    (tmp_path / "e" / "model.safetensors").write_bytes((tmp_path / "d" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the config"):
        VQModel.from_pretrained(tmp_path / "e")
    (tmp_path / "e" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        VQModel.from_pretrained(tmp_path / "e")


def _reference_state(config):
    """A synthetic state dict in the reference VQGAN-LC layout (training extras included)."""
    ours = VQModel(config).state_dict()
    ref = {}
    for key, value in ours.items():
        key = key.replace("quantizer.codebook", "tok_embeddings.weight")
        key = key.replace("quantizer.projector.", "codebook_projection.")
        ref[key] = torch.randn_like(value) if value.is_floating_point() else value
    ref["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    return {"model": ref}


def test_reference_checkpoint_f16_layout_loads(tmp_path):
    # f16 preset shapes with a small codebook (100 x 768)
    config = TokenizerConfig(AutoencoderConfig(), tiny_config().quantizer)
    config.quantizer.codebook_size, config.quantizer.codebook_dim, config.quantizer.dim = 100, 768, 8
    raw = _reference_state(config)
    torch.save(raw, tmp_path / "ref.pth")
    model = load_reference_checkpoint(tmp_path / "ref.pth", config)
    torch.testing.assert_close(model.quantizer.codebook, raw["model"]["tok_embeddings.weight"])
    torch.testing.assert_close(model.quantizer.projector.weight, raw["model"]["codebook_projection.weight"])
    torch.testing.assert_close(model.encoder.down[0].block[0].norm1.weight,
                               raw["model"]["encoder.down.0.block.0.norm1.weight"])


def test_reference_checkpoint_mismatch_errors(tmp_path):
    config = tiny_config()
    raw = _reference_state(config)
    raw["model"]["tok_embeddings.weight"] = torch.zeros(64, 768)
    with pytest.raises(ValueError, match="codebook is 64 x 768, config expects 64 x 12"):
        model_from_reference_state(convert_reference_state_dict(raw), config)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable torch checkpoint"):
        load_reference_checkpoint(tmp_path / "bad.pth", config)
