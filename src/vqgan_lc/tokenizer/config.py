"""Typed tokenizer configuration and the registry of named presets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..quantize.config import QuantizerConfig


@dataclass
class AutoencoderConfig(Config):
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)    # f16; (1, 2, 2, 4) is f8
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)     # feature-map sizes with attention (plus the middle block)
    z_channels: int = 256
    dropout: float = 0.0
    norm_groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def check(self) -> None:
        if min(self.resolution, self.in_channels, self.out_channels, self.ch, self.z_channels, self.norm_groups) < 1:
            raise ValueError("autoencoder sizes (resolution, channels, ch, z_channels, norm_groups) must be positive")
        if not self.ch_mult or min(self.ch_mult) < 1 or self.num_res_blocks < 1:
            raise ValueError(f"autoencoder ch_mult needs positive entries and num_res_blocks >= 1, got "
                             f"{self.ch_mult} and {self.num_res_blocks}")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"autoencoder resolution {self.resolution} is not a multiple of the downsampling "
                             f"factor {self.downsample_factor}")
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % min(self.norm_groups, w) for w in widths):
            raise ValueError(f"autoencoder widths {widths} must be multiples of norm_groups={self.norm_groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"autoencoder dropout must lie in [0, 1), got {self.dropout}")


@dataclass
class TokenizerConfig(Config):
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    # Latent statistics: 1 / std of the quant_conv latents, measured by `vqgan-lc cache latents
    # ... --write-scale` on the training set; used by the diffusion generators when set (it
    # becomes train-gen's default latent_scale). None keeps the paper's unscaled latents.
    # It describes the latents and does not change what the tokenizer computes.
    latent_scale: float | None = None

    def check(self) -> None:
        if self.latent_scale is not None and not (0 < self.latent_scale < float("inf")):
            raise ValueError(f"tokenizer latent_scale must be a positive finite number or none, got {self.latent_scale}")


def _f16(**quantizer: Any) -> TokenizerConfig:
    return TokenizerConfig(AutoencoderConfig(), QuantizerConfig(**quantizer))


def _f8(**quantizer: Any) -> TokenizerConfig:
    # f8 of the paper: 32x32 tokens, attention only in the middle block.
    ae = AutoencoderConfig(ch_mult=(1, 2, 2, 4), attn_resolutions=())
    return TokenizerConfig(ae, QuantizerConfig(**quantizer))


def _tiny(**quantizer: Any) -> TokenizerConfig:
    # CPU preset: 64 px crops, f8 -> 8x8 tokens, ~1.5M parameters; trains in minutes on 2 cores.
    ae = AutoencoderConfig(resolution=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1,
                           attn_resolutions=(), z_channels=64, norm_groups=16)
    return TokenizerConfig(ae, QuantizerConfig(**quantizer))


def _small(**quantizer: Any) -> TokenizerConfig:
    # CPU/GPU preset: 128 px crops, f16 like the paper (8x8 tokens), ~7M parameters.
    ae = AutoencoderConfig(resolution=128, ch=64, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1,
                           attn_resolutions=(8,), z_channels=128)
    return TokenizerConfig(ae, QuantizerConfig(**quantizer))


_LC = dict(kind="lc", codebook_dim=768)
PRESETS: dict[str, Callable[[], TokenizerConfig]] = {
    # the paper's models (CLIP ViT-L/14 codebook, 768-d entries)
    "vqgan-lc-f16-100k": lambda: _f16(**_LC, codebook_size=100_000, dim=8),
    "vqgan-lc-f16-16k": lambda: _f16(**_LC, codebook_size=16_384, dim=8),
    "vqgan-lc-f8-100k": lambda: _f8(**_LC, codebook_size=100_000, dim=4),
    # the paper's baselines: same encoder/decoder, only the codebook differs
    "vqgan-f16-16k": lambda: _f16(kind="vq", codebook_size=16_384, dim=256),
    "vqgan-f16-100k": lambda: _f16(kind="vq", codebook_size=100_000, dim=256),
    "vqgan-fc-f16-16k": lambda: _f16(kind="fc", codebook_size=16_384, dim=8),
    "vqgan-fc-f16-100k": lambda: _f16(kind="fc", codebook_size=100_000, dim=8),
    "vqgan-ema-f16-16k": lambda: _f16(kind="ema", codebook_size=16_384, dim=256),
    "vqgan-ema-f16-100k": lambda: _f16(kind="ema", codebook_size=100_000, dim=256),
    # small presets for CPUs and tests (offline EfficientNet-Lite0 codebook: 112-d entries)
    "vqgan-lc-tiny": lambda: _tiny(kind="lc", codebook_size=16_384, dim=8, codebook_dim=112),
    "vqgan-tiny": lambda: _tiny(kind="vq", codebook_size=16_384, dim=64),
    "vqgan-lc-small": lambda: _small(kind="lc", codebook_size=16_384, dim=8, codebook_dim=112),
    "vqgan-small": lambda: _small(kind="vq", codebook_size=16_384, dim=128),
}


# The quantizer's learning-rate multiplier (the LC projector; the VQ/FC codebook) of every short
# CPU run: the `cpu-*` recipes, `make demo` and the study. In a few hundred steps the encoder's
# latents grow several-fold while an Adam step moves each projector weight by at most ~lr, so at
# the paper's single rate the projected codebook lags behind the latent cloud and most entries
# fall outside it (docs/utilization.md measures this).
CPU_QUANTIZER_LR_SCALE = 30.0


def get_preset(name: str) -> TokenizerConfig:
    """A fresh config for a named preset (edit the returned dataclasses freely)."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
