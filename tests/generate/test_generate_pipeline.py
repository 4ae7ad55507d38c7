"""Cache -> train-gen -> sample for every generator family, through the library and the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.generate.cache import CacheConfig, GeneratorDataset, build_cache, open_cache
from vqgan_lc.generate.sample import SampleConfig, sample_run
from vqgan_lc.generate.training import generator_config, read_generator_run, train_generator
from vqgan_lc.quantize import QuantizerConfig
from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
from vqgan_lc.tokenizer.model import VQModel

TINY_GEN = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny LC tokenizer (16 px, f4 -> 4x4 tokens) and 3 classes of 8 coloured images."""
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    ae = AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=32, dim=4, codebook_dim=8))).save_pretrained(
        root / "tok")
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
        (root / "data" / str(c)).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / str(c) / f"{i}.png")
    for kind in ("tokens", "latents"):
        build_cache(CacheConfig(tokenizer=str(root / "tok"), data=str(root / "data"), out=str(root / kind), kind=kind,
                                flip=kind == "tokens", workers=0, progress=False))
    return root


def test_token_and_latent_caches_hold_what_the_tokenizer_computes(setup):
    tokens, latents = open_cache(str(setup / "tokens")), open_cache(str(setup / "latents"))
    assert tokens.num_items == latents.num_items == 24 and tokens.class_names == ["0", "1", "2"]
    assert tokens.item_shape("tokens") == (4, 4) and tokens.rows("tokens").dtype == np.int32
    assert "tokens_flip" in tokens.keys and latents.item_shape("latents") == (4, 4, 4)
    model = VQModel.from_pretrained(setup / "tok")
    from vqgan_lc.data import build_dataset
    image = build_dataset(str(setup / "data"), 16, train=False)[int(tokens.image_ids[5])]["image"][None]
    with torch.no_grad():
        enc = model.encode(image)
    assert np.array_equal(tokens.rows("tokens")[5], enc.indices[0].numpy())
    np.testing.assert_allclose(latents.rows("latents")[5], enc.latents[0].numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(tokens.rows("tokens_flip")[5], model.encode(image.flip(-1)).indices[0].numpy())
    stats = json.loads((setup / "latents" / "latent_stats.json").read_text())
    assert len(stats["mean"]) == 4 and stats["scale"] > 0
    # training items: flattened raster tokens, the flipped copy chosen per (seed, epoch, item)
    data = GeneratorDataset(tokens, seed=0)
    picks = {tuple(data[5]["x"].tolist()) for data.epoch in range(8)}
    assert picks == {tuple(tokens.rows(k)[5].ravel().tolist()) for k in ("tokens", "tokens_flip")}


@pytest.mark.parametrize("preset, overrides", [("gpt-tiny", TINY_GEN),
                                               ("dit-tiny", ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"]),
                                               ("sit-tiny", ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"]),
                                               ("ldm-tiny", ["model.model_channels=16", "model.norm_groups=8"])])
def test_train_resume_and_sample_every_family(setup, tmp_path, preset, overrides):
    cache = str(setup / ("tokens" if preset.startswith("gpt") else "latents"))
    common = [*overrides, "max_steps=4", "batch_size=4", "save_every=2", "log_every=1", "lr=1e-3"]
    full = train_generator(generator_config(preset, cache, str(tmp_path / "full"), common), progress=False)
    split = generator_config(preset, cache, str(tmp_path / "split"), common)
    train_generator(split, stop_at_step=2, progress=False)
    resumed = train_generator(generator_config(preset, cache, str(tmp_path / "split"), common),
                              resume=tmp_path / "split", progress=False)
    assert resumed.step == 4
    for (key, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    assert read_generator_run(tmp_path / "full").generator == preset
    fast = {"dit-tiny": dict(method="ddim", steps=3), "ldm-tiny": dict(method="ddim", steps=3),
            "sit-tiny": dict(method="heun", steps=2)}.get(preset, {})
    reports = [sample_run(SampleConfig(run=str(tmp_path / "full"), out=str(tmp_path / f"s{i}"), classes=(0, 2),
                                       per_class=2, cfg_scale=2.0, seed=7, **fast)) for i in range(2)]
    assert reports[0]["num_samples"] == 4 and 0 < reports[0]["utilization"] <= 1
    tokens = [np.load(tmp_path / f"s{i}" / "tokens.npy") for i in range(2)]
    assert tokens[0].shape == (4, 16) and np.array_equal(tokens[0], tokens[1])  # seeded: reproducible
    assert sorted(p.name for p in (tmp_path / "s0").iterdir() if p.is_dir()) == ["0", "2"]
    assert (tmp_path / "s0" / "2" / "0001.png").is_file() and (tmp_path / "s0" / "grid.png").is_file()


def test_the_four_commands_and_their_errors(setup, tmp_path, capsys):
    assert main(["cache", "tokens", str(setup / "tok"), "--data", str(setup / "data"), "--out",
                 str(tmp_path / "c"), "--workers", "0"]) == 0
    assert main(["train-gen", "gpt-tiny", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--set", *TINY_GEN, "max_steps=2", "batch_size=4"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--classes", "1", "--per-class", "3", "--out",
                 str(tmp_path / "s"), "--cfg-scale", "1.5"]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["guidance_scale"] == 1.5 and report["codebook_size"] == 32 and report["num_samples"] == 3
    capsys.readouterr()
    # one line each: a gpt on latents, an unknown preset, a class the generator does not know
    assert main(["train-gen", "gpt-tiny", "--cache", str(setup / "latents"), "--out", str(tmp_path / "x")]) == 2
    assert "cache tokens" in capsys.readouterr().err
    assert main(["train-gen", "vae-tiny", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "x")]) == 2
    assert "unknown generator preset" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "run"), "--classes", "9", "--out", str(tmp_path / "s9")]) == 2
    err = capsys.readouterr().err.strip()
    assert "class 9 does not exist" in err and "\n" not in err
    # a resumed run keeps its configuration
    assert main(["train-gen", "--resume", str(tmp_path / "run"), "--set", "lr=5"]) == 2
    assert "lr differ(s) from the saved run" in capsys.readouterr().err
    assert main(["train-gen", "--resume", str(tmp_path / "run"), "--set", "max_steps=3"]) == 0


def _ddp_worker(rank, cache, out):
    config = generator_config("gpt-tiny", cache, out, [*TINY_GEN, "max_steps=3", "batch_size=2", "device=cpu"])
    result = train_generator(config, progress=False)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")


def test_two_process_gloo_ddp_keeps_generator_ranks_identical(setup, tmp_path, run_ranks):
    run_ranks(_ddp_worker, str(setup / "tokens"), str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert (tmp_path / "generator" / "model.safetensors").is_file()


TINY_LATENT = {"dit-tiny": ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"],
               "sit-tiny": ["model.depth=1", "model.hidden_size=32", "model.num_heads=2"],
               "ldm-tiny": ["model.model_channels=16", "model.norm_groups=8"]}


def _ddp_latent_worker(rank, preset, cache, out):
    # No EMA: after 3 steps an EMA of 0.9999 would still be the (seeded, identical) initial weights.
    config = generator_config(preset, cache, out, [*TINY_LATENT[preset], "max_steps=3", "batch_size=2",
                                                   "device=cpu", "ema_decay=none", "lr=1e-3"])
    result = train_generator(config, progress=False)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")


@pytest.mark.parametrize("preset", sorted(TINY_LATENT))
def test_two_process_gloo_ddp_keeps_latent_generator_ranks_identical(setup, tmp_path, preset, run_ranks):
    """Each rank draws its own items, noise and times; only the all-reduce keeps them in step."""
    from vqgan_lc.generate.training import build_generator

    run_ranks(_ddp_latent_worker, preset, str(setup / "latents"), str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # ... and training moved them: tensors that start at zero whatever the seed (biases, the
    # zero-initialised output layers) are no longer all zero.
    initial = build_generator(read_generator_run(tmp_path)).state_dict()
    zero_at_init = [k for k, v in initial.items() if v.is_floating_point() and not v.any()]
    assert zero_at_init and any(r0[k].any() for k in zero_at_init)
    assert (tmp_path / "generator" / "model.safetensors").is_file()
