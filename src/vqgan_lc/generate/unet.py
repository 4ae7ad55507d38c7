"""The LDM UNet on tokenizer latents, class-conditional through cross-attention.

Layout of latent-diffusion's `openaimodel.UNetModel`: an input conv, then per resolution level
`num_res_blocks` residual blocks (GroupNorm, SiLU, time-embedding injection), a spatial
transformer after each where the level's downsample factor is in `attention_resolutions`,
and a strided-conv downsample between levels; a middle of residual / transformer / residual;
a mirrored decoder that concatenates the encoder's skips; GroupNorm, SiLU and a zero-initialised
output conv (the untrained model predicts 0). As in LDM's class-conditional ImageNet model the
class reaches the network only through cross-attention to one learned class-embedding token;
the table has `num_classes + 1` rows, the last being the null class of classifier-free guidance.

Timesteps: `t` is a (B,) float tensor embedded sinusoidally with periods from 2*pi to
2*pi * 10000, tuned to the diffusion process's integer steps 0..999 passed as floats (times in
[0, 1] would use only the slowest frequencies; a caller on that scale multiplies by 1000).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..pretrained import PretrainedModel
# LDM's upsampling layer is the VQGAN decoder's (nearest x2, then a 3x3 conv), key for key
from ..tokenizer.autoencoder import Upsample
from .guidance import guided


@dataclass
class UNetConfig(Config):
    in_channels: int = 8                          # D', the tokenizer's latent width
    out_channels: int | None = None               # None: same as in_channels (eps prediction)
    input_size: int = 16                          # latent grid side (16 for f16 at 256 px)
    num_classes: int = 1000
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 4)     # width multiplier per resolution level
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2)   # downsample factors whose blocks get a transformer
    num_heads: int = 8                            # attention heads at every level (unless num_head_channels)
    # LDM's `num_head_channels`: heads = level width / this (32 in LDM-LC); None: num_heads everywhere
    num_head_channels: int | None = None
    context_dim: int = 512                        # width of the class-embedding token
    class_dropout: float = 0.1                    # training label dropout to the null class (for CFG)
    dropout: float = 0.0
    norm_groups: int = 32                         # GroupNorm groups (LDM: 32)
    # GroupNorm eps of the residual blocks and the output norm (LDM: 1e-5); the spatial
    # transformers' input norms keep 1e-6 in both
    norm_eps: float = 1e-6

    def heads_at(self, width: int) -> int:
        """Attention heads of a transformer of this width."""
        return self.num_heads if self.num_head_channels is None else width // self.num_head_channels

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def check(self) -> None:
        for name in ("in_channels", "input_size", "num_classes", "model_channels", "num_res_blocks", "num_heads",
                     "context_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"unet.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_head_channels is not None and self.num_head_channels < 1:
            raise ValueError(f"unet.num_head_channels must be >= 1 (or None for num_heads), got {self.num_head_channels}")
        if not 0.0 < self.norm_eps < 1.0:
            raise ValueError(f"unet.norm_eps must lie in (0, 1), got {self.norm_eps}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"unet.out_channels must be >= 1 (or None for in_channels), got {self.out_channels}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"unet.channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.input_size % self.downsample_factor:
            raise ValueError(f"unet.input_size {self.input_size} must be divisible by {self.downsample_factor} "
                             f"(2 ** (len(channel_mult) - 1)); change input_size or drop a channel_mult level")
        factors = [2 ** i for i in range(len(self.channel_mult))]
        if any(r < 1 for r in self.attention_resolutions):
            raise ValueError(f"unet.attention_resolutions must be positive downsample factors, got "
                             f"{self.attention_resolutions}")
        stray = [r for r in self.attention_resolutions if r not in factors]
        if stray:
            # LDM accepts and ignores them (LDM-LC's f16 config lists 4 for a two-level UNet)
            warnings.warn(f"unet.attention_resolutions {stray} are not downsample factors of this UNet "
                          f"(it has {factors}); no block gets attention there", stacklevel=2)
        for mult in self.channel_mult:
            width = self.model_channels * mult
            if width % self.norm_groups:
                raise ValueError(f"unet: width {width} (model_channels * {mult}) is not divisible by "
                                 f"norm_groups={self.norm_groups}; change model_channels or norm_groups")
            if self.num_head_channels is None and width % self.num_heads:
                raise ValueError(f"unet: width {width} (model_channels * {mult}) is not divisible by "
                                 f"num_heads={self.num_heads}; change model_channels or num_heads")
            if self.num_head_channels is not None and width % self.num_head_channels:
                raise ValueError(f"unet: width {width} (model_channels * {mult}) is not divisible by "
                                 f"num_head_channels={self.num_head_channels}; change one of them")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"unet.class_dropout must be in [0, 1), got {self.class_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"unet.dropout must be in [0, 1), got {self.dropout}")


UNET_PRESETS: dict[str, Callable[[], UNetConfig]] = {
    # CPU preset: two levels, one block each, attention at the half-resolution level.
    "ldm-tiny": lambda: UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_resolutions=(2,), num_heads=2, context_dim=64, norm_groups=8),
    # Close to the paper's class-conditional LDM: attention at the two coarser levels.
    "ldm-base": lambda: UNetConfig(model_channels=256, channel_mult=(1, 2, 4), num_res_blocks=2,
                                   attention_resolutions=(4, 2), num_heads=8, context_dim=512),
}


def unet_config(preset: str, *, in_channels: int, input_size: int, num_classes: int, **overrides: Any) -> UNetConfig:
    """A validated config: the named preset for this latent shape and class count, plus field overrides."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; available: {', '.join(sorted(UNET_PRESETS))}")
    config = UNET_PRESETS[preset]()
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown UNet field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    fields = dict(overrides, in_channels=in_channels, input_size=input_size, num_classes=num_classes)
    return dataclasses.replace(config, **fields).validate()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of float times t (B,) -> (B, dim): [cos | sin] at geometric frequencies."""
    half = dim // 2
    # Computed per call, not stored: a non-persistent buffer could not be restored by from_pretrained.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    # A residual branch that starts at zero makes every block an identity at initialisation.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added between, with a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = _norm(cin, groups, eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = _norm(cout, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, C) to `context` (B, M, Dc); self-attention without context."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        # (B, N, C) -> (B, heads, N, C / heads)
        q, k, v = (u.unflatten(-1, (self.heads, -1)).transpose(1, 2) for u in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """The feed-forward's gated GELU input layer (LDM's choice)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, and a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dropout=dropout)
        self.attn2 = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.ff = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialTransformer(nn.Module):
    """A transformer block over the H*W positions of a feature map, as a zero-initialised residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.block = TransformerBlock(channels, heads, context_dim, dropout)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.proj_in(self.norm(x))
        h = self.block(h.flatten(2).transpose(1, 2), context)          # (B, HW, C)
        h = h.transpose(1, 2).unflatten(2, (height, width))
        return x + self.proj_out(h)


class Stage(nn.ModuleList):
    """A run of layers, each given what it needs: the time embedding, the class context, or neither."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(PretrainedModel):
    """LDM UNet: `forward(x (B, C, H, W), t (B,) float, y (B,) int64) -> (B, out_channels, H, W)`."""

    model_type = "vqgan-lc-unet"
    config_class = UNetConfig
    config: UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        c = self.config
        mc, groups, drop = c.model_channels, c.norm_groups, c.dropout
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(c.num_classes + 1, c.context_dim)

        def transformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, c.heads_at(ch), c.context_dim, drop, groups)

        def resblock(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, drop, groups, c.norm_eps)

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(c.in_channels, mc, 3, padding=1)])])
        skips, ch, factor = [mc], mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if factor in c.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level < len(c.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skips.append(ch)
                factor *= 2

        self.middle_block = Stage([resblock(ch, ch), transformer(ch), resblock(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            # one more block per level than on the way down: it takes the downsample's (or input conv's) skip
            for i in range(c.num_res_blocks + 1):
                layers = [resblock(ch + skips.pop(), mult * mc)]
                ch = mult * mc
                if factor in c.attention_resolutions:
                    layers.append(transformer(ch))
                if level > 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(Stage(layers))

        self.out = nn.Sequential(_norm(ch, groups, c.norm_eps), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, c.output_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % c.downsample_factor or width % c.downsample_factor:
            raise ValueError(f"UNet input {height}x{width} is not divisible by {c.downsample_factor} "
                             f"(2 ** (len(channel_mult) - 1)); pad or crop the latent grid")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"t and y must have shape ({x.shape[0]},), got {tuple(t.shape)} and {tuple(y.shape)}")
        if y.dtype != torch.long:
            raise ValueError(f"y must hold int64 class ids, got {y.dtype}")
        if self.training and c.class_dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < c.class_dropout
            y = torch.where(drop, torch.full_like(y, c.num_classes), y)

        emb = self.time_embed(timestep_embedding(t, c.model_channels).to(x.dtype))
        context = self.class_embed(y)[:, None, :]                          # one class token (B, 1, context_dim)
        h, skips = x, []
        for stage in self.input_blocks:
            h = stage(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guided output (all channels), the null class being `num_classes`; call in eval mode."""
        return guided(self, x, t, y, cfg_scale, self.config.num_classes)
