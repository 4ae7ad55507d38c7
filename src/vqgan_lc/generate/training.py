"""Training generators on the shared loop: GPT on cached token ids; DiT, SiT, LDM on cached latents.

    vqgan-lc train-gen gpt-tiny --cache CACHE --out RUN [--set max_steps=2000 lr=3e-4 ...]

A generator preset names an architecture (`gpt-*`, `dit-*`, `sit-*`, `ldm-*`); the cache
decides the rest of the model config (vocabulary = codebook size, number of classes, token
grid or latent shape). The run folder gets `generator/` (the EMA weights when EMA is on) and
everything the shared loop writes; `vqgan-lc sample RUN` reads both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..pretrained import PretrainedModel
from ..train.config import TrainConfig
from ..train.loop import StepContext, TrainingTask, TrainResult, run_training
from .cache import GeneratorDataset, default_latent_scale, open_cache
from .families import DataSpec, family_of

EXPORT_NAME = "generator"


def data_spec(store) -> DataSpec:
    """What a cache offers a generator: kind, grid, vocabulary, latent width and class count."""
    header = store.header
    labels = store.labels
    num_classes = max(len(store.class_names), int(labels.max()) + 1 if labels is not None else 1)
    return DataSpec(kind=header["kind"], grid=tuple(header["grid"]), codebook_size=header["codebook_size"],
                    latent_dim=header["latent_dim"], num_classes=num_classes)


def model_config_for(preset: str, store, **overrides: Any) -> Config:
    """The generator's config: the preset's architecture sized to what the cache holds."""
    return family_of(preset).model_config(preset, data_spec(store), **overrides)


@dataclass
class GeneratorTrainConfig(TrainConfig):
    generator: str = "gpt-tiny"        # preset name: gpt-* | dit-* | sit-* | ldm-*
    model: Config | None = None        # the architecture, sized by the cache (model_config_for)
    # latents are multiplied by this for training. Default: the tokenizer's measured latent_scale
    # when its config has one (`cache latents --write-scale`), else 1.0, the paper's unscaled latents.
    latent_scale: float = 1.0
    diffusion_steps: int = 1000        # dit / ldm: training schedule length
    # AdamW as in DiT and LlamaGen; the paper's generators train with constant learning rates.
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    lr: float = 1e-4
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.9999   # DiT/SiT/LDM keep an EMA; set none to export the raw weights
    # What sampling needs of the data, copied from the cache, so that a run samples without it.
    tokenizer: str = ""                # the tokenizer that encoded the cache (absolute path or hub id)
    tokenizer_fingerprint: str = ""    # its config + weights hash: decoding with another is refused
    class_names: tuple[str, ...] = ()  # names of class ids 0, 1, ... where the data had them
    image_size: int = 0                # the resolution the cache was encoded at
    codebook_size: int = 0

    def check(self) -> None:
        super().check()
        expected = family_of(self.generator).config_class()
        if self.model is None:
            raise ValueError("the generator config has no model; build it with model_config_for(preset, cache)")
        if not isinstance(self.model, expected):
            raise ValueError(f"{self.generator} needs a {expected.__name__}, got {type(self.model).__name__}")
        if not self.latent_scale > 0 or self.diffusion_steps < 2:
            raise ValueError(f"latent_scale must be > 0 and diffusion_steps >= 2, got {self.latent_scale}, "
                             f"{self.diffusion_steps}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorTrainConfig":
        data = dict(data)
        model = data.pop("model", None)
        config = super().from_dict(data)
        if model is not None:
            config.model = family_of(config.generator).config_class().from_dict(model)
        return config


def build_generator(config: GeneratorTrainConfig) -> PretrainedModel:
    return family_of(config.generator).model_class()(config.model)


class Objective(nn.Module):
    """model + process as one module whose forward is the training loss: what DDP wraps, so
    gradients are all-reduced however the family computes its loss."""

    def __init__(self, model: PretrainedModel, config: GeneratorTrainConfig):
        super().__init__()
        from .pipeline import process_config_of
        self.model = model
        self.family = family_of(config.generator)
        self.process = self.family.build_process(process_config_of(config))
        # token ids are not scaled; latents are brought to the scale the generator trains at
        self.latent_scale = config.latent_scale if self.family.data_kind == "latents" else 1.0

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        if self.latent_scale != 1.0:
            x = x * self.latent_scale
        return self.family.training_loss(self.model, self.process, x, labels)


class GeneratorTask(TrainingTask):
    name = EXPORT_NAME

    def __init__(self, config: GeneratorTrainConfig):
        self.config = config

    def build_model(self) -> PretrainedModel:
        return build_generator(self.config)

    def build_dataset(self):
        return GeneratorDataset(open_cache(self.config.data), seed=self.config.seed)

    def training_module(self, model: PretrainedModel) -> nn.Module:
        return Objective(model, self.config)

    def build_optimizers(self, model: PretrainedModel):
        cfg = self.config
        return {"generator": model.configure_optimizer(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)}

    def train_step(self, ctx: StepContext, batches: list) -> dict[str, float]:
        logs_sum: dict[str, float] = {}
        for batch in batches:
            x = batch["x"].to(ctx.env.device, non_blocking=True)
            labels = batch["label"].to(ctx.env.device)
            if bool((labels < 0).any()):
                labels = torch.where(labels < 0, torch.zeros_like(labels), labels)  # unlabelled data: one class
            with ctx.autocast():
                loss, logs = ctx.module(x, labels)
            ctx.backward(loss, logs)
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / len(batches)
        ctx.optimizer_step("generator", ctx.optimizers["generator"])
        return logs_sum


def train_generator(config: GeneratorTrainConfig, *, resume: str | os.PathLike | None = None,
                    stop_at_step: int | None = None, progress: bool = True) -> TrainResult:
    """Train, then leave the run folder as a pipeline folder (generator/, tokenizer/,
    process.json: see `pipeline.py`) once the last step is done."""
    from .. import distributed
    from .pipeline import export_run

    result = run_training(GeneratorTask(config), resume=resume, stop_at_step=stop_at_step, progress=progress)
    if result.is_main and result.step >= config.max_steps:
        export_run(result.out_dir)
    distributed.barrier()
    return result


def generator_config(preset: str, cache: str, out: str, overrides: list[str] | tuple[str, ...] = ()) -> GeneratorTrainConfig:
    """Resolve preset + cache + `key=value` overrides into a validated config (what the CLI calls)."""
    store = open_cache(cache)
    header = store.header
    family = family_of(preset)
    config = GeneratorTrainConfig(generator=preset, model=model_config_for(preset, store),
                                  data=os.path.abspath(cache), out_dir=out, ema_decay=family.ema_decay,
                                  tokenizer=header["tokenizer"], class_names=tuple(store.class_names),
                                  image_size=int(header.get("image_size", 0)), codebook_size=header["codebook_size"])
    config.tokenizer_fingerprint = header.get("tokenizer_fingerprint") or _fingerprint_if_present(header)
    if family.data_kind == "latents":
        # A scale stored for this cache (`cache latents --write-scale`) is the default;
        # `--set latent_scale=...` below still overrides it. The run's config keeps the value
        # used, so sampling divides by the same number.
        measured = default_latent_scale(store)
        if measured is not None:
            config.latent_scale = measured
    return config.override(list(overrides)).validate()


def _fingerprint_if_present(header: dict) -> str:
    """A cache from before caches recorded their tokenizer's fingerprint: take it now, if the
    folder it names still holds a tokenizer that encodes like the one that built the cache."""
    from ..pretrained import read_config_file
    from .cache import same_encoder

    folder = header["tokenizer"]
    from ..tokenizer.fingerprint import tokenizer_fingerprint
    try:
        if not same_encoder(header.get("tokenizer_config", {}), read_config_file(folder)):
            return ""
        return tokenizer_fingerprint(folder)
    except (FileNotFoundError, ValueError):
        return ""


def read_generator_run(run_dir: str | os.PathLike) -> GeneratorTrainConfig:
    from ..train.config import CONFIG_NAME, read_json_file, read_run_config

    path = Path(run_dir) / CONFIG_NAME
    if path.is_file() and "generator" not in read_json_file(path, "the run's saved configuration"):
        raise ValueError(f"{run_dir} is a tokenizer run, not a generator run")
    return read_run_config(run_dir, GeneratorTrainConfig, "generator run")


__all__ = ["GeneratorTrainConfig", "GeneratorTask", "data_spec", "generator_config", "model_config_for",
           "read_generator_run", "train_generator"]
