"""One record per generator family: what it trains on, how it is built, trained and sampled.

    family = family_of("dit-tiny")                 # the record named by a preset's prefix
    config = family.model_config("dit-tiny", data) # the architecture sized to the data
    model = family.model_class()(config)
    process = family.build_process(process_config) # GaussianDiffusion, Transport, or None (GPT)
    loss, logs = family.training_loss(model, process, x, labels)
    drawn = family.sample(model, process, labels, request, rng)

Nothing outside this module compares family names. Adding a family (say, MaskGIT) is one
subclass of `Family` with its model module and one `register_family(...)` call (see the README,
"Adding a model family"); training, sampling, export, checkpoints and DDP then work unchanged.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import Config


@dataclass(frozen=True)
class DataSpec:
    """What a generator is sized to: the cache's kind, token grid, vocabulary and classes."""
    kind: str                  # "tokens" | "latents"
    grid: tuple[int, int]
    codebook_size: int
    latent_dim: int
    num_classes: int


@dataclass
class SampleRequest:
    """Sampling settings a family reads; `method` and `steps` are already resolved. `options`
    go to the process's sampler as they are (guided_channels, grid, eta, final_alpha_bar, atol,
    rtol: what a protocol such as the reference code's needs beyond our defaults)."""
    method: str
    steps: int | None
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Drawn:
    """A family's raw draw for one batch: token ids (B, h, w) or latents (B, D', h, w) in the
    tokenizer's scale, and the number of batched network evaluations it took."""
    ids: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    nfe: int = 0


def _import(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class Family(ABC):
    """Base record. Subclasses set the class attributes and implement the abstract methods."""
    name: ClassVar[str]
    data_kind: ClassVar[str]                  # the cache kind it trains on
    model_path: ClassVar[str]                 # "module:Class" of its PretrainedModel
    config_path: ClassVar[str]                # "module:Class" of its model Config
    samplers: ClassVar[tuple[str, ...]]       # the first is the default
    default_steps: ClassVar[dict[str, int | None]] = {}
    ema_decay: ClassVar[float | None] = None  # training default; None exports the raw weights
    adaptive_samplers: ClassVar[tuple[str, ...]] = ()  # samplers that choose their own step count

    def model_class(self) -> type:
        return _import(self.model_path)

    def config_class(self) -> type[Config]:
        return _import(self.config_path)

    @abstractmethod
    def presets(self) -> list[str]:
        """The preset names of this family (`<name>-tiny`, ...)."""

    @abstractmethod
    def model_config(self, preset: str, data: DataSpec, **overrides: Any) -> Config:
        """The preset's architecture sized to `data` (vocabulary, grid, latent width, classes)."""

    def build_process(self, process_config) -> Any:
        """The training/sampling process for a `ProcessConfig` (None: the model is its own)."""
        return None

    @abstractmethod
    def training_loss(self, model: nn.Module, process: Any, x: torch.Tensor, labels: torch.Tensor):
        """(loss, logs) of one batch: token ids or latents `x` already at the training scale."""

    @abstractmethod
    def sample(self, model: nn.Module, process: Any, labels: torch.Tensor, request: SampleRequest,
               shape: tuple[int, ...], rng, noise: torch.Tensor | None = None) -> Drawn:
        """Draw for `labels` (B,); `noise` (B, *shape) replaces the starting noise drawn from `rng`."""

    def check_data(self, preset: str, data: DataSpec) -> None:
        if data.kind != self.data_kind:
            how = "`vqgan-lc cache tokens`" if self.data_kind == "tokens" else "`vqgan-lc cache latents`"
            what = "token ids" if self.data_kind == "tokens" else "continuous latents"
            raise ValueError(f"{preset} trains on {what}; build the cache with {how}")

    def resolve_sampler(self, method: str | None, steps: int | None) -> tuple[str, int | None]:
        """(method, steps) with the family defaults filled in; refuses what the family cannot do."""
        method = method or self.samplers[0]
        if method not in self.samplers:
            raise ValueError(f"{self.name} samples with {' | '.join(self.samplers)}, not {method!r}")
        if method in self.adaptive_samplers:
            if steps is not None:
                raise ValueError(f"{method} chooses its own steps (adaptive); drop --steps or pick a fixed-step "
                                 f"sampler ({', '.join(s for s in self.samplers if s not in self.adaptive_samplers)})")
            return method, None
        return method, steps or self.default_steps.get(method)


class TokenFamily(Family):
    """GPT on token ids: next-token cross-entropy; sampling draws ids autoregressively."""
    name = "gpt"
    data_kind = "tokens"
    model_path = "vqgan_lc.generate.gpt:GPT"
    config_path = "vqgan_lc.generate.gpt:GPTConfig"
    samplers = ("ar",)
    default_steps = {"ar": None}

    def presets(self) -> list[str]:
        from .gpt import GPT_PRESETS
        return list(GPT_PRESETS)

    def model_config(self, preset, data, **overrides):
        from .gpt import gpt_config
        self.check_data(preset, data)
        h, w = data.grid
        return gpt_config(preset, vocab_size=data.codebook_size, num_classes=data.num_classes, block_size=h * w,
                          **overrides)

    def training_loss(self, model, process, x, labels):
        return model.training_loss(x, labels)

    def sample(self, model, process, labels, request, shape, rng, noise=None) -> Drawn:
        ids = model.generate(labels, temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                             cfg_scale=request.cfg_scale, generator=rng, **request.options)
        return Drawn(ids=ids.view(len(labels), *shape[-2:]), nfe=ids.shape[1])


class LatentFamily(Family):
    """Families on continuous latents: the loss and the sampler come from the process; the
    architecture from a preset table and a config factory sized by the latents' width and grid."""
    data_kind = "latents"
    presets_path: ClassVar[str]   # "module:NAME" of the preset table
    factory_path: ClassVar[str]   # "module:function(preset, *, in_channels, input_size, num_classes, **overrides)"

    def presets(self) -> list[str]:
        return list(_import(self.presets_path))

    def model_config(self, preset, data, **overrides):
        self.check_data(preset, data)
        return _import(self.factory_path)(preset, in_channels=data.latent_dim, input_size=data.grid[0],
                                          num_classes=data.num_classes, **overrides)

    def network(self, model: nn.Module) -> nn.Module:
        """What the process calls: the model itself unless the family reads time differently."""
        return model

    def check_data(self, preset, data):
        super().check_data(preset, data)
        if data.grid[0] != data.grid[1]:
            raise ValueError(f"{preset} needs a square latent grid, the cache holds {data.grid[0]}x{data.grid[1]}")

    def training_loss(self, model, process, x, labels):
        loss, logs = process.training_loss(self.network(model), x, labels)
        return loss, {k: float(v) for k, v in logs.items()}


class DiffusionFamily(LatentFamily):
    """DiT: eps (and sigma) prediction on the linear 1000-step schedule."""
    name = "dit"
    model_path = "vqgan_lc.generate.dit:DiT"
    config_path = "vqgan_lc.generate.dit:DiTConfig"
    samplers = ("ddpm", "ddim")
    default_steps = {"ddpm": 250, "ddim": 200}
    ema_decay = 0.9999
    schedule = "dit"   # GaussianDiffusion preset
    presets_path = "vqgan_lc.generate.dit:DIT_PRESETS"
    factory_path = "vqgan_lc.generate.dit:dit_config"

    def build_process(self, process_config):
        from .diffusion import GaussianDiffusion
        return GaussianDiffusion.from_preset(self.schedule, num_timesteps=process_config.diffusion_steps)

    def sample(self, model, process, labels, request, shape, rng, noise=None) -> Drawn:
        from .noise import randn
        if noise is None:
            noise = randn((len(labels), *shape), generator=rng, device=labels.device)
        x = process.sample(self.network(model), noise, labels, cfg_scale=request.cfg_scale,
                           null_label=model.config.num_classes, method=request.method, steps=request.steps,
                           generator=rng, **request.options)
        return Drawn(latents=x, nfe=request.steps)


class UNetFamily(DiffusionFamily):
    """LDM: a UNet denoiser on LDM's scaled-linear schedule, DDIM by default."""
    name = "ldm"
    model_path = "vqgan_lc.generate.unet:UNet"
    config_path = "vqgan_lc.generate.unet:UNetConfig"
    samplers = ("ddim", "ddpm")
    schedule = "ldm"
    presets_path = "vqgan_lc.generate.unet:UNET_PRESETS"
    factory_path = "vqgan_lc.generate.unet:unet_config"


class SiTBackbone(nn.Module):
    """A DiT read as a velocity field of continuous time t in [0, 1]: `DiT.velocity` scales t by
    the model's `sit_time_scale` (1000 for ours, whose embedder sees step units; 1 for SiT-LC)."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        self.config = dit.config  # the sampler reads num_classes for the null class

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.dit.velocity(x, t, y)


class InterpolantFamily(LatentFamily):
    """SiT: DiT's backbone predicting the velocity of the linear interpolant, ODE/SDE samplers."""
    name = "sit"
    model_path = "vqgan_lc.generate.dit:DiT"
    config_path = "vqgan_lc.generate.dit:DiTConfig"
    samplers = ("dopri5", "heun", "euler", "sde")
    adaptive_samplers = ("dopri5",)
    default_steps = {"heun": 50, "euler": 100, "sde": 100}
    ema_decay = 0.9999
    presets_path = "vqgan_lc.generate.dit:DIT_PRESETS"
    factory_path = "vqgan_lc.generate.dit:dit_config"

    def presets(self) -> list[str]:  # DiT's architectures under the sit- prefix
        return ["sit-" + name.split("-", 1)[1] for name in super().presets()]

    def model_config(self, preset, data, **overrides):
        self.check_data(preset, data)  # named as the user wrote it
        overrides.setdefault("learn_sigma", False)  # a velocity head: no variance channels
        return super().model_config("dit-" + preset.split("-", 1)[1], data, **overrides)

    def network(self, model):
        return SiTBackbone(model)

    def build_process(self, process_config):
        from .transport import Transport
        return Transport()

    def sample(self, model, process, labels, request, shape, rng, noise=None) -> Drawn:
        from .noise import randn
        if noise is None:
            noise = randn((len(labels), *shape), generator=rng, device=labels.device)
        x, info = process.sample(self.network(model).eval(), noise, labels, cfg_scale=request.cfg_scale,
                                 null_label=model.config.num_classes, method=request.method,
                                 steps=request.steps or 1, generator=rng, **request.options)
        return Drawn(latents=x, nfe=int(info["nfe"]))


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make a family known to train-gen, sample, export and info (by its `name` prefix)."""
    if not getattr(family, "name", "") or "-" in family.name:
        raise ValueError(f"a family needs a name without '-', got {getattr(family, 'name', None)!r}")
    FAMILIES[family.name] = family
    return family


for _family in (TokenFamily(), DiffusionFamily(), InterpolantFamily(), UNetFamily()):
    register_family(_family)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(preset: str) -> Family:
    """The family a preset belongs to: the part of its name before the first '-'."""
    name = preset.split("-", 1)[0]
    if name not in FAMILIES:
        raise ValueError(f"unknown generator preset {preset!r}; presets start with one of {', '.join(FAMILIES)} "
                         "(see `vqgan-lc presets`)")
    return FAMILIES[name]


__all__ = ["DataSpec", "Drawn", "FAMILIES", "Family", "SampleRequest", "SiTBackbone", "family_of", "get_family",
           "register_family"]
