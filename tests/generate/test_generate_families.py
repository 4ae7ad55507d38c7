"""The family registry: one record per family, and a new family added by the README's recipe alone."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqgan_lc import pretrained
from vqgan_lc.config import Config
from vqgan_lc.generate import families
from vqgan_lc.generate.cache import CacheConfig, build_cache
from vqgan_lc.generate.families import Drawn, Family, family_of, get_family, register_family
from vqgan_lc.generate.sample import SampleConfig, sample_run
from vqgan_lc.generate.training import generator_config, train_generator
from vqgan_lc.pretrained import PretrainedModel


def test_every_family_is_one_record_named_by_its_preset_prefix():
    assert set(families.FAMILIES) == {"gpt", "dit", "sit", "ldm"}
    for name, record in families.FAMILIES.items():
        assert family_of(f"{name}-tiny") is record and get_family(name) is record
        assert f"{name}-tiny" in record.presets()
        assert issubclass(record.model_class(), PretrainedModel) and issubclass(record.config_class(), Config)
    assert get_family("gpt").data_kind == "tokens" and get_family("sit").data_kind == "latents"
    with pytest.raises(ValueError, match="presets start with one of"):
        family_of("vae-tiny")


def test_samplers_are_resolved_with_the_family_defaults_and_refused_when_meaningless():
    assert get_family("dit").resolve_sampler(None, None) == ("ddpm", 250)
    assert get_family("ldm").resolve_sampler(None, None) == ("ddim", 200)
    assert get_family("sit").resolve_sampler("heun", None) == ("heun", 50)
    assert get_family("sit").resolve_sampler(None, None) == ("dopri5", None)
    with pytest.raises(ValueError, match="chooses its own steps"):
        get_family("sit").resolve_sampler("dopri5", 20)  # --steps with an adaptive sampler did nothing before
    with pytest.raises(ValueError, match="ddpm | ddim"):
        get_family("dit").resolve_sampler("heun", None)


def test_no_family_name_is_compared_outside_the_registry():
    """Family behaviour lives in families.py; the rest of the package asks the record. The one
    exception is reference.py, whose branches tell apart the reference repository's four
    released checkpoint formats (their key layouts and carried tokenizers) while converting;
    sampling them goes through the registry like every other folder."""
    import re
    from pathlib import Path

    import vqgan_lc
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](gpt|dit|sit|ldm)["']|["'](gpt|dit|sit|ldm)["']\s*(==|!=)""")
    offenders = []
    for path in Path(vqgan_lc.__file__).parent.rglob("*.py"):
        if path.name in ("families.py", "reference.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders


# --- a toy family, added exactly as the README's "Adding a model family" says -------------------

@dataclass
class BigramConfig(Config):
    vocab_size: int = 8
    num_classes: int = 2
    block_size: int = 4

    def check(self) -> None:
        if self.vocab_size < 2:
            raise ValueError("vocab_size must be >= 2")


class Bigram(PretrainedModel):
    """Next token from the previous one and the class: the smallest autoregressive generator."""
    model_type = "test-bigram"
    config_class = BigramConfig

    def __init__(self, config: BigramConfig):
        super().__init__(config)
        self.table = nn.Embedding((config.vocab_size + 1) * (config.num_classes + 1), config.vocab_size)

    def logits(self, previous, labels):
        return self.table(previous * (self.config.num_classes + 1) + labels)

    def training_loss(self, tokens, labels):
        start = torch.full_like(tokens[:, :1], self.config.vocab_size)
        previous = torch.cat([start, tokens[:, :-1]], dim=1)
        logits = self.logits(previous, labels[:, None].expand_as(previous))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        return loss, {}


class BigramFamily(Family):
    name = "bigram"
    data_kind = "tokens"
    model_path = f"{__name__}:Bigram"
    config_path = f"{__name__}:BigramConfig"
    samplers = ("ar",)

    def presets(self):
        return ["bigram-tiny"]

    def model_config(self, preset, data, **overrides):
        self.check_data(preset, data)
        return BigramConfig(vocab_size=data.codebook_size, num_classes=data.num_classes,
                            block_size=data.grid[0] * data.grid[1], **overrides)

    def training_loss(self, model, process, x, labels):
        return model.training_loss(x, labels)

    def sample(self, model, process, labels, request, shape, rng):
        from vqgan_lc.generate.noise import multinomial
        previous = torch.full_like(labels, model.config.vocab_size)
        ids = []
        for _ in range(model.config.block_size):
            probs = model.logits(previous, labels).softmax(-1)
            previous = multinomial(probs, 1, generator=rng).squeeze(-1)
            ids.append(previous)
        return Drawn(ids=torch.stack(ids, 1).view(len(labels), *shape[-2:]), nfe=model.config.block_size)


@pytest.fixture()
def bigram_registered(monkeypatch):
    monkeypatch.setitem(pretrained.MODEL_TYPES, "test-bigram", f"{__name__}:Bigram")
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    register_family(BigramFamily())


def test_a_new_family_trains_exports_and_samples_through_the_recipe_alone(tmp_path, bigram_registered, tiny_tokenizer):
    tiny_tokenizer(tmp_path / "tok", resolution=16, codebook_size=16, codebook_dim=8)
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / str(c)).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / str(c) / f"{i}.png")
    build_cache(CacheConfig(tokenizer=str(tmp_path / "tok"), data=str(tmp_path / "data"), out=str(tmp_path / "cache"),
                            kind="tokens", workers=0, progress=False))
    config = generator_config("bigram-tiny", str(tmp_path / "cache"), str(tmp_path / "run"),
                              ["max_steps=3", "batch_size=4", "lr=0.1"])
    result = train_generator(config, progress=False)
    assert result.step == 3 and isinstance(result.model, Bigram)
    report = sample_run(SampleConfig(run=str(tmp_path / "run"), out=str(tmp_path / "s"), per_class=2, progress=False))
    assert report["family"] == "bigram" and report["num_samples"] == 4
    assert np.load(tmp_path / "s" / "tokens.npy").shape == (4, 16)
