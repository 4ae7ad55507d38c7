"""A measured latent scale: stored in the cache only on request, then train-gen's default; the tokenizer is never written."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.generate.cache import (SCALE_NAME, CacheConfig, build_cache, default_latent_scale, latent_stats,
                                     open_cache, write_latent_scale)
from vqgan_lc.generate.training import generator_config, read_generator_run, train_generator
from vqgan_lc.quantize import QuantizerConfig
from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
from vqgan_lc.tokenizer.model import VQModel

DIT = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"]


def _tokenizer(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    ae = AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    return VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=32, dim=4, codebook_dim=8)))


@pytest.fixture()
def setup(tmp_path):
    """A tiny LC tokenizer (16 px -> 4x4 latents of 4 channels) and 2 classes of 4 images."""
    _tokenizer().save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / str(c)).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / str(c) / f"{i}.png")
    return tmp_path


def _cache(root, name="latents", **kw):
    return build_cache(CacheConfig(tokenizer=str(root / "tok"), data=str(root / "data"), out=str(root / name),
                                   kind="latents", workers=0, progress=False, **kw))


def test_tokenizer_config_latent_scale_field():
    config = _tokenizer().config
    assert config.latent_scale is None  # the paper: unscaled latents
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="latent_scale"):
            TokenizerConfig(config.autoencoder, config.quantizer, latent_scale=bad).validate()
    again = TokenizerConfig.from_dict({**config.to_dict(), "latent_scale": 0.25})
    assert again.latent_scale == 0.25 and again.to_dict()["latent_scale"] == 0.25
    old = config.to_dict()
    del old["latent_scale"]  # a config.json written before the field existed
    assert TokenizerConfig.from_dict(old).latent_scale is None


def test_scale_is_written_only_on_request_and_becomes_the_generator_default(setup):
    store = _cache(setup)
    tokenizer_files = {p.name: p.read_bytes() for p in (setup / "tok").iterdir()}
    assert default_latent_scale(store) is None
    assert generator_config("dit-tiny", str(setup / "latents"), str(setup / "run"), DIT).latent_scale == 1.0

    scale = write_latent_scale(setup / "latents")
    stats = latent_stats(store)
    assert scale == pytest.approx(stats["scale"]) and scale != 1.0
    flat = np.asarray(store.rows("latents")[:], dtype=np.float64)
    assert scale == pytest.approx(1.0 / flat.std(), rel=1e-6)  # 1 / std over every cached value
    assert json.loads((setup / "latents" / SCALE_NAME).read_text())["latent_scale"] == pytest.approx(scale)
    # the input tokenizer is byte for byte what it was
    assert {p.name: p.read_bytes() for p in (setup / "tok").iterdir()} == tokenizer_files

    assert default_latent_scale(open_cache(str(setup / "latents"))) == pytest.approx(scale)
    config = generator_config("sit-tiny", str(setup / "latents"), str(setup / "run"), DIT)
    assert config.latent_scale == pytest.approx(scale)
    assert generator_config("dit-tiny", str(setup / "latents"), str(setup / "o"), [*DIT, "latent_scale=2"]
                            ).latent_scale == 2.0  # an explicit --set still wins
    result = train_generator(generator_config("dit-tiny", str(setup / "latents"), str(setup / "run"),
                                              [*DIT, "max_steps=1", "batch_size=4"]), progress=False)
    assert result.step == 1
    # the run records the scale it trained with, which sampling divides by
    assert read_generator_run(setup / "run").latent_scale == pytest.approx(scale)


def test_cli_write_scale_writes_into_the_cache_not_the_tokenizer(setup, capsys):
    before = (setup / "tok" / "config.json").read_bytes()
    assert main(["cache", "latents", str(setup / "tok"), "--data", str(setup / "data"), "--out",
                 str(setup / "latents"), "--workers", "0", "--write-scale"]) == 0
    assert (setup / "tok" / "config.json").read_bytes() == before
    assert (setup / "latents" / SCALE_NAME).is_file()
    assert SCALE_NAME in capsys.readouterr().out


def test_a_scale_an_earlier_version_stored_in_the_tokenizer_is_still_the_default(setup):
    """Tokenizers written by earlier versions with `--write-scale` keep their scale as the default,
    as long as the folder still holds the tokenizer that encoded the cache."""
    store = _cache(setup)
    model = VQModel.from_pretrained(setup / "tok")
    model.config.latent_scale = 0.5
    model.save_pretrained(setup / "tok")
    assert default_latent_scale(open_cache(str(setup / "latents"))) == 0.5
    other = _tokenizer(seed=1)
    other.config.autoencoder.z_channels = 16  # another architecture now sits in the folder
    other.config.latent_scale = 0.5
    VQModel(other.config).save_pretrained(setup / "tok")
    assert default_latent_scale(store) is None
    shutil.rmtree(setup / "tok")  # a moved tokenizer: back to the paper's unscaled default
    assert generator_config("dit-tiny", str(setup / "latents"), str(setup / "run"), DIT).latent_scale == 1.0


def test_cli_write_scale_is_repeatable_and_refused_for_token_caches(setup, capsys):
    args = ["cache", "latents", str(setup / "tok"), "--data", str(setup / "data"), "--out", str(setup / "c"),
            "--workers", "0", "--write-scale"]
    assert main(args) == 0
    stats = json.loads((setup / "c" / "latent_stats.json").read_text())
    assert json.loads((setup / "c" / SCALE_NAME).read_text())["latent_scale"] == pytest.approx(stats["scale"])
    # the same command again reuses the finished cache: the stored scale does not make it "another job"
    assert main(args) == 0
    capsys.readouterr()
    assert main(["cache", "tokens", str(setup / "tok"), "--data", str(setup / "data"), "--out",
                 str(setup / "t"), "--workers", "0", "--write-scale"]) == 2
    assert "--write-scale" in capsys.readouterr().err


def test_a_cache_written_before_a_tokenizer_setting_existed_is_reused_and_another_tokenizers_refused(setup):
    from vqgan_lc.data.cache import MANIFEST

    first = _cache(setup)
    manifest_path = setup / "latents" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["header"]["tokenizer_config"]["quantizer"]["gradient"]  # as an earlier version wrote it
    manifest_path.write_text(json.dumps(manifest))
    again = _cache(setup)  # the setting's default encodes alike: the same cache, not "another job"
    assert again.num_items == first.num_items
    assert np.array_equal(again.rows("latents")[:], first.rows("latents")[:])
    manifest["header"]["tokenizer_config"]["quantizer"]["codebook_size"] = 64  # a recorded setting that differs
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="holds the cache of another job"):
        _cache(setup)
