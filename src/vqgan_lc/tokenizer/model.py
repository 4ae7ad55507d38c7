"""The tokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..quantize import Quantizer, QuantizerOutput, build_quantizer
from .autoencoder import Decoder, Encoder
from .config import TokenizerConfig, get_preset


@dataclass
class EncodeOutput:
    latents: torch.Tensor     # (B, D', h, w) continuous quant_conv output (what LDM/DiT/SiT model)
    quantized: torch.Tensor   # (B, D', h, w) nearest entries (straight-through)
    indices: torch.Tensor     # (B, h, w) int64 token ids


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    latents: torch.Tensor         # (B, D', h, w) before quantization
    quantizer: QuantizerOutput


class VQModel(nn.Module):
    def __init__(self, config: TokenizerConfig, codebook: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        ae, q = config.autoencoder, config.quantizer
        self.encoder = Encoder(ae)
        self.decoder = Decoder(ae)
        self.quant_conv = nn.Conv2d(ae.z_channels, q.dim, 1)
        self.post_quant_conv = nn.Conv2d(q.dim, ae.z_channels, 1)
        self.quantizer: Quantizer = build_quantizer(q, codebook)

    @classmethod
    def from_preset(cls, name: str, codebook: torch.Tensor | None = None) -> "VQModel":
        return cls(get_preset(name), codebook)

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def token_grid(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Token grid (h, w) for an image size (default: the configured resolution)."""
        size = image_size or self.config.autoencoder.resolution
        h, w = (size, size) if isinstance(size, int) else size
        f = self.config.autoencoder.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not a multiple of the downsampling factor {f}")
        return h // f, w // f

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's last weight: VQGAN's adaptive GAN weight is a grad-norm ratio on it."""
        return self.decoder.conv_out.weight

    def num_trainable_parameters(self) -> int:
        """What the paper counts: encoder, decoder, the 1x1 convs and the projector (not the frozen codebook)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # --- the pipeline --------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        c = self.config.autoencoder.in_channels
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"expected images of shape (B, {c}, H, W), got {tuple(images.shape)}")
        self.token_grid(tuple(images.shape[-2:]))

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> EncodeOutput:
        latents = self.encode_latents(images)
        q = self.quantizer(latents)
        return EncodeOutput(latents, q.quantized, q.indices)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quantized))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) token ids -> images; equals decoding the quantized latents of `encode`."""
        if indices.ndim != 3:
            raise ValueError(f"indices must have shape (B, h, w), got {tuple(indices.shape)}")
        return self.decode(self.quantizer.indices_to_latents(indices))

    def snap_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Continuous latents (e.g. sampled by a diffusion model) -> nearest codebook entries."""
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        idx = self.quantizer.search(self.quantizer.normalize(flat))
        return idx.view(latents.shape[0], *latents.shape[2:])

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        latents = self.encode_latents(images)
        q = self.quantizer(latents)
        return TokenizerOutput(self.decode(q.quantized), latents, q)

    # --- checkpoints (see checkpoint.py) -------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from .checkpoint import save_pretrained
        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> "VQModel":
        from .checkpoint import load_pretrained
        return load_pretrained(directory, map_location)
