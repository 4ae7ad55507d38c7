"""DiT: a class-conditional diffusion transformer on the tokenizer's continuous latents.

The latent (B, D', h, w) is cut into p x p patches, each patch becomes one token with a fixed
2-D sin-cos position, and a stack of transformer blocks predicts the noise (and, with
`learn_sigma`, a variance interpolation) for every patch. The timestep and the class label
are summed into one conditioning vector that drives every block through adaLN-Zero: a
LayerNorm without affine parameters whose shift, scale and residual gate are regressed from
the conditioning. Those regressors and the output layer start at zero, so at initialisation
every block is the identity and the model outputs zeros (the paper's most stable choice).

Timesteps: `forward` takes `t` in **diffusion-step units**, [0, 1000). `GaussianDiffusion`
passes the original (un-respaced) step index. A continuous-time caller with t in [0, 1] (SiT)
calls `velocity`, which multiplies t by `sit_time_scale` first: 1000 (the default) makes the
sinusoidal frequencies cover the same range as DiT's steps; the paper's released SiT-LC was
trained with t as it is (scale 1).

The same presets serve SiT, which predicts a velocity and has no variance output: build its
config with `dit_config(preset, ..., learn_sigma=False)`.

Positions: `pos_embed_layout` "columns-first" is the DiT paper's fixed table (the first half of
the width codes a patch's column, the second its row); "rows-first" is the transposed table of
models saved before the field existed, kept so that they load and compute what they did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..pretrained import PretrainedModel
from .guidance import guided

# Continuous times in [0, 1] are multiplied by this before `DiT.forward` (see module docstring).
TIMESTEP_SCALE = 1000.0


@dataclass
class DiTConfig(Config):
    in_channels: int = 8          # D' of the tokenizer's latent
    input_size: int = 16          # side of the latent grid (16 for f16 at 256 px)
    num_classes: int = 1000       # the id `num_classes` is the null (unconditional) class
    patch_size: int = 2
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1    # probability of replacing a label by the null class in training
    learn_sigma: bool = True      # output 2 * in_channels: noise, then the variance interpolation
    # 2-D sin-cos table: "columns-first" (the DiT paper's) or "rows-first" (models saved before this
    # field existed: a config.json without it means rows-first, see from_dict)
    pos_embed_layout: str = "columns-first"
    # SiT: `velocity` embeds t * sit_time_scale (1000: DiT's step units; 1.0: the reference SiT-LC)
    sit_time_scale: float = TIMESTEP_SCALE

    POS_EMBED_LAYOUTS = ("columns-first", "rows-first")

    @classmethod
    def from_dict(cls, data):
        # A saved config without the field predates it: its position table is the rows-first one.
        if isinstance(data, dict) and "pos_embed_layout" not in data:
            data = {**data, "pos_embed_layout": "rows-first"}
        return super().from_dict(data)

    def check(self) -> None:
        for name in ("in_channels", "input_size", "num_classes", "patch_size", "depth", "hidden_size", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"DiTConfig.input_size {self.input_size} is not a multiple of patch_size "
                             f"{self.patch_size}; pick a patch size that divides the latent grid")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DiTConfig.hidden_size {self.hidden_size} is not divisible by num_heads "
                             f"{self.num_heads}; pick a width that is a multiple of the head count")
        if self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size {self.hidden_size} must be a multiple of 4 "
                             "(the 2-D sin-cos position splits it into sin/cos of rows and columns)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"DiTConfig.class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.pos_embed_layout not in self.POS_EMBED_LAYOUTS:
            raise ValueError(f"DiTConfig.pos_embed_layout must be one of {', '.join(self.POS_EMBED_LAYOUTS)}, "
                             f"got {self.pos_embed_layout!r}")
        if not 0.0 < self.sit_time_scale < float("inf"):
            raise ValueError(f"DiTConfig.sit_time_scale must be a positive number (1000: step units, 1: t as is), "
                             f"got {self.sit_time_scale}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


# Model sizes of the DiT paper (S/B/L/XL at patch 2) plus a CPU-sized one; SiT uses the same.
DIT_PRESETS: dict[str, dict[str, int]] = {
    "dit-tiny": dict(depth=4, hidden_size=128, num_heads=4, patch_size=2),
    "dit-S": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "dit-B": dict(depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "dit-L": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "dit-XL": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
}


def dit_config(preset: str, *, in_channels: int, input_size: int, num_classes: int, **overrides) -> DiTConfig:
    """A validated DiTConfig for a named size; `overrides` replace any field (e.g. learn_sigma=False for SiT)."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; available: {', '.join(DIT_PRESETS)}")
    fields = dict(DIT_PRESETS[preset], in_channels=in_channels, input_size=input_size, num_classes=num_classes)
    unknown = sorted(set(overrides) - set(DiTConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"dit_config: unknown field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(DiTConfig.__dataclass_fields__)}")
    fields.update(overrides)
    return DiTConfig(**fields).validate()


def sincos_positions_2d(dim: int, grid: int, layout: str = "columns-first") -> torch.Tensor:
    """(grid * grid, dim) fixed positions in raster order. "columns-first" (the DiT paper's table):
    the first half of `dim` codes the column, the second the row; "rows-first": the other way round."""
    if layout not in DiTConfig.POS_EMBED_LAYOUTS:
        raise ValueError(f"unknown position layout {layout!r}; use one of {', '.join(DiTConfig.POS_EMBED_LAYOUTS)}")
    quarter = dim // 4
    # Geometric frequencies from 1 down to 1/10000, as in the original transformer.
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    angles = coords[:, None] * freqs[None]                                 # (grid, dim/4)
    axis = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)        # (grid, dim/2)
    rows = axis[:, None, :].expand(grid, grid, dim // 2)
    cols = axis[None, :, :].expand(grid, grid, dim // 2)
    halves = [cols, rows] if layout == "columns-first" else [rows, cols]
    return torch.cat(halves, dim=-1).reshape(grid * grid, dim).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # `1 + scale` so that a zero regressor leaves the normalised input unchanged.
    return x * (1 + scale[:, None]) + shift[:, None]


def _xavier(linear: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _zero(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class TimestepEmbedder(nn.Module):
    """Float timesteps (diffusion-step units) -> sinusoidal features -> MLP -> (B, hidden)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def sinusoidal(self, t: torch.Tensor) -> torch.Tensor:
        # Computed on the fly (no buffer): nothing here needs saving, and floats of any scale work.
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.sinusoidal(t).to(self.mlp[0].weight.dtype)
        return self.mlp(features)


class LabelEmbedder(nn.Module):
    """Class ids -> (B, hidden); row `num_classes` is the learned null class used for guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + 1, hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def drop(self, labels: torch.Tensor, train: bool, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Labels with some replaced by the null id: where `force_drop` is true, else at random in training."""
        if force_drop is not None:
            mask = force_drop.to(device=labels.device, dtype=torch.bool)
        elif train and self.dropout > 0:
            # Training the unconditional model alongside the conditional one is what makes CFG possible.
            mask = torch.rand(labels.shape[0], device=labels.device) < self.dropout
        else:
            return labels
        return torch.where(mask, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.table(self.drop(labels, train, force_drop))


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = _xavier(nn.Linear(hidden_size, 3 * hidden_size))
        self.proj = _xavier(nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Self-attention + MLP, each wrapped in adaLN-Zero (shift/scale before, gate after)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(_xavier(nn.Linear(hidden_size, hidden)), nn.GELU(approximate="tanh"),
                                 _xavier(nn.Linear(hidden, hidden_size)))
        # Zero regressor: both gates start at 0, so the block starts as the identity.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero(nn.Linear(hidden_size, 6 * hidden_size)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift/scale) then a linear map from each token to its p x p x C_out patch; zero at init."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = _zero(nn.Linear(hidden_size, patch_size * patch_size * out_channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero(nn.Linear(hidden_size, 2 * hidden_size)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(PretrainedModel):
    """forward(x (B, D', h, w), t (B,) float steps, y (B,) int64) -> (B, out_channels, h, w)."""

    config_class = DiTConfig
    config: DiTConfig
    model_type = "vqgan-lc-dit"

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        c = config
        grid = c.input_size // c.patch_size
        self.patch_embed = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        # Xavier on the flattened kernel: the conv is a linear map of each flattened patch.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(c.hidden_size, -1))
        nn.init.zeros_(self.patch_embed.bias)
        # Persistent on purpose: from_pretrained builds on the meta device and restores buffers from the file.
        self.register_buffer("pos_embed", sincos_positions_2d(c.hidden_size, grid, c.pos_embed_layout)[None])
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, p * p * C) -> (B, C, h, w), tokens in raster order."""
        p, c = self.config.patch_size, self.out_channels
        grid = self.config.input_size // p
        x = tokens.view(tokens.shape[0], grid, grid, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], c, grid * p, grid * p)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"DiT expects latents of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}; "
                             "check in_channels/input_size against the tokenizer")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"DiT expects t and y of shape ({x.shape[0]},), got {tuple(t.shape)} and {tuple(y.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (and variance) prediction. In training mode labels drop to the null class with
        probability `class_dropout`; `force_drop` (B,) bool replaces them where true, in any mode."""
        self._check_inputs(x, t, y)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        cond = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return self.unpatchify(self.final_layer(tokens, cond))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SiT: the velocity at continuous times t (B,) in [0, 1], embedded as t * sit_time_scale.
        A model with a variance head returns only its first in_channels (as the reference SiT does)."""
        out = self(x, t * self.config.sit_time_scale, y)
        return out[:, :self.config.in_channels] if self.config.learn_sigma else out

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         guided_channels: int | None = None) -> torch.Tensor:
        """Classifier-free guided output (call in eval mode): the first `guided_channels` channels
        are guided (all D' noise channels when None; 3 in the reference code), the rest, the
        variance half included, come from the conditional pass."""
        channels = self.config.in_channels if guided_channels is None else guided_channels
        return guided(self, x, t, y, cfg_scale, self.config.num_classes, guided_channels=channels)
