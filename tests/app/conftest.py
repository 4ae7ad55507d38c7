"""A tiny world for the app: 2 classes of 32 px images, a per-class codebook with exemplars (a
registered 8x8-stride conv backbone), an untrained LC tokenizer on it (f4: 8x8 tokens) trained
"from" that codebook (its run's train_config.json names it), and a 1-step GPT on its tokens."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqgan_lc.backbones import register_backbone, wrap_module


def _backbone(weights=None, pretrained=True):
    torch.manual_seed(0)
    return wrap_module(nn.Conv2d(3, 6, kernel_size=8, stride=8), input_size=32, name="test-app-conv", dim=6)


register_backbone("test-app-conv", _backbone)


def write_images(folder, per_class=4):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 60, 200)]):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            pixels[:16, :16] = 255 - pixels[:16, :16]  # a distinct top-left quarter: cells differ
            Image.fromarray(pixels).save(folder / f"class{c}" / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from vqgan_lc.codebook.folder import CodebookBuildConfig, build_codebook_file
    from vqgan_lc.generate.cache import CacheConfig, build_cache
    from vqgan_lc.generate.training import generator_config, train_generator
    from vqgan_lc.quantize import QuantizerConfig
    from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
    from vqgan_lc.tokenizer.model import VQModel

    root = tmp_path_factory.mktemp("app")
    data = write_images(root / "data")
    codebook = root / "codebook.safetensors"
    build_codebook_file(CodebookBuildConfig(data=str(data), size=8, out=str(codebook), backbone="test-app-conv",
                                            pool=2, iters=3, workers=0, progress=False, device="cpu",
                                            features_dir=str(root / "features"), exemplars=3).validate())
    torch.manual_seed(0)
    ae = AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    tokenizer = root / "run" / "tokenizer"
    VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=8, dim=4, codebook_dim=6)),
            codebook=str(codebook)).save_pretrained(tokenizer)
    (root / "run" / "train_config.json").write_text(json.dumps({"codebook": str(codebook)}))
    build_cache(CacheConfig(tokenizer=str(tokenizer), data=str(data), out=str(root / "tokens"), kind="tokens",
                            workers=0, progress=False))
    overrides = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "max_steps=1", "batch_size=4",
                 "save_every=1", "log_every=1"]
    train_generator(generator_config("gpt-tiny", str(root / "tokens"), str(root / "gpt"), overrides), progress=False)
    return {"root": root, "data": data, "codebook": codebook, "tokenizer": tokenizer, "generator": root / "gpt"}
