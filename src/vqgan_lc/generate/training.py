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
from .cache import GeneratorDataset, open_cache, tokenizer_latent_scale

FAMILIES = ("gpt", "dit", "sit", "ldm")
EXPORT_NAME = "generator"


def family_of(preset: str) -> str:
    family = preset.split("-", 1)[0]
    if family not in FAMILIES:
        raise ValueError(f"unknown generator preset {preset!r}; presets start with one of {', '.join(FAMILIES)} "
                         "(see `vqgan-lc presets`)")
    return family


def model_config_for(preset: str, store, **overrides: Any) -> Config:
    """The generator's config: the preset's architecture sized to what the cache holds."""
    family = family_of(preset)
    header = store.header
    labels = store.labels
    num_classes = max(len(store.class_names), int(labels.max()) + 1 if labels is not None else 1)
    h, w = header["grid"]
    if family == "gpt":
        if header["kind"] != "tokens":
            raise ValueError(f"{preset} trains on token ids; build the cache with `vqgan-lc cache tokens`")
        from .gpt import gpt_config
        return gpt_config(preset, vocab_size=header["codebook_size"], num_classes=num_classes, block_size=h * w,
                          **overrides)
    if header["kind"] != "latents":
        raise ValueError(f"{preset} trains on continuous latents; build the cache with `vqgan-lc cache latents`")
    if h != w:
        raise ValueError(f"{preset} needs a square latent grid, the cache holds {h}x{w}")
    if family == "ldm":
        from .unet import unet_config
        return unet_config(preset, in_channels=header["latent_dim"], input_size=h, num_classes=num_classes,
                           **overrides)
    from .dit import dit_config
    arch = "dit-" + preset.split("-", 1)[1]  # SiT shares DiT's presets, with a velocity head
    if family == "sit":
        overrides.setdefault("learn_sigma", False)
    return dit_config(arch, in_channels=header["latent_dim"], input_size=h, num_classes=num_classes, **overrides)


def _config_class(family: str) -> type[Config]:
    if family == "gpt":
        from .gpt import GPTConfig
        return GPTConfig
    if family == "ldm":
        from .unet import UNetConfig
        return UNetConfig
    from .dit import DiTConfig
    return DiTConfig


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

    def check(self) -> None:
        super().check()
        family = family_of(self.generator)
        if self.model is None:
            raise ValueError("the generator config has no model; build it with model_config_for(preset, cache)")
        if not isinstance(self.model, _config_class(family)):
            raise ValueError(f"{self.generator} needs a {_config_class(family).__name__}, got {type(self.model).__name__}")
        if not self.latent_scale > 0 or self.diffusion_steps < 2:
            raise ValueError(f"latent_scale must be > 0 and diffusion_steps >= 2, got {self.latent_scale}, "
                             f"{self.diffusion_steps}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorTrainConfig":
        data = dict(data)
        model = data.pop("model", None)
        config = super().from_dict(data)
        if model is not None:
            config.model = _config_class(family_of(config.generator)).from_dict(model)
        return config


def build_process(config: GeneratorTrainConfig):
    """The family's training/sampling process: Gaussian diffusion (dit, ldm) or the linear interpolant (sit)."""
    family = family_of(config.generator)
    if family == "sit":
        from .transport import Transport
        return Transport()
    if family in ("dit", "ldm"):
        from .diffusion import GaussianDiffusion
        return GaussianDiffusion.from_preset(family, num_timesteps=config.diffusion_steps)
    return None


def build_generator(config: GeneratorTrainConfig) -> PretrainedModel:
    family = family_of(config.generator)
    if family == "gpt":
        from .gpt import GPT
        return GPT(config.model)
    if family == "ldm":
        from .unet import UNet
        return UNet(config.model)
    from .dit import DiT
    return DiT(config.model)


class SiTBackbone(nn.Module):
    """A DiT read as a velocity field of continuous time t in [0, 1] (DiT embeds step units)."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .dit import TIMESTEP_SCALE
        return self.dit(x, t * TIMESTEP_SCALE, y)


class Objective(nn.Module):
    """model + process as one module whose forward is the training loss: what DDP wraps, so
    gradients are all-reduced however the family computes its loss."""

    def __init__(self, model: PretrainedModel, config: GeneratorTrainConfig):
        super().__init__()
        self.model = model
        self.family = family_of(config.generator)
        self.process = build_process(config)
        self.latent_scale = config.latent_scale

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        if self.family == "gpt":
            return self.model.training_loss(x, labels)
        x = x * self.latent_scale
        net = SiTBackbone(self.model) if self.family == "sit" else self.model
        loss, logs = self.process.training_loss(net, x, labels)
        return loss, {k: float(v) for k, v in logs.items()}


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
        # no weight decay on norms, biases and embeddings' 1-d parameters (the usual AdamW split)
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return {"generator": torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)}

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
    return run_training(GeneratorTask(config), resume=resume, stop_at_step=stop_at_step, progress=progress)


def generator_config(preset: str, cache: str, out: str, overrides: list[str] | tuple[str, ...] = ()) -> GeneratorTrainConfig:
    """Resolve preset + cache + `key=value` overrides into a validated config (what the CLI calls)."""
    store = open_cache(cache)
    config = GeneratorTrainConfig(generator=preset, model=model_config_for(preset, store), data=cache, out_dir=out)
    if family_of(preset) == "gpt":
        config.ema_decay = None  # LlamaGen's GPTs train without an EMA
    else:
        # A scale the user stored in the tokenizer (measured on its training latents) is the
        # default; `--set latent_scale=...` below still overrides it. The run's config keeps
        # the value used, so sampling divides by the same number.
        measured = tokenizer_latent_scale(store)
        if measured is not None:
            config.latent_scale = measured
    return config.override(list(overrides)).validate()


def read_generator_run(run_dir: str | os.PathLike) -> GeneratorTrainConfig:
    from ..train.config import CONFIG_NAME, read_json_file, read_run_config

    path = Path(run_dir) / CONFIG_NAME
    if path.is_file() and "generator" not in read_json_file(path, "the run's saved configuration"):
        raise ValueError(f"{run_dir} is a tokenizer run, not a generator run")
    return read_run_config(run_dir, GeneratorTrainConfig, "generator run")


__all__ = ["FAMILIES", "GeneratorTrainConfig", "GeneratorTask", "generator_config", "model_config_for",
           "read_generator_run", "train_generator", "build_process", "SiTBackbone"]
