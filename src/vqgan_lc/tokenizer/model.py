"""The tokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..config import renamed
from ..pretrained import PretrainedModel
from ..quantize import Quantizer, QuantizerOutput, build_quantizer
from ..quantize.base import Unpackable
from ..quantize.lc import adopt_codebook
from .autoencoder import Decoder, Encoder
from .config import TokenizerConfig, get_preset


@dataclass
class EncodeOutput(Unpackable):
    """What `encode` and `snap_latents` return; unpacks in field order:
    `latents, quantized, indices = model.encode(x)`.

    Unlike diffusers' `VQModel.encode`, whose `.latents` are the unquantized latents that its
    `decode` then quantizes, here `decode` never quantizes: decode `quantized` (or the
    `indices`), not `latents`, to get the tokenizer's reconstruction."""

    _unpack = ("latents", "quantized", "indices")

    latents: torch.Tensor     # (B, D', h, w) continuous quant_conv output (what LDM/DiT/SiT model)
    quantized: torch.Tensor   # (B, D', h, w) nearest entries (straight-through)
    indices: torch.Tensor     # (B, h, w) int64 token ids


@dataclass
class TokenizerOutput(Unpackable):
    """What `model(x)` returns; unpacks in field order:
    `reconstruction, latents, quantizer_out = model(x)` (itself a `QuantizerOutput`)."""

    _unpack = ("reconstruction", "latents", "quantizer")

    reconstruction: torch.Tensor  # (B, 3, H, W)
    latents: torch.Tensor         # (B, D', h, w) before quantization
    quantizer: QuantizerOutput


class VQModel(PretrainedModel):
    """`codebook` (LC only): the frozen (N, C) entries, as a tensor or a codebook file. Its shape
    decides N and C (see `quantize.lc.adopt_codebook`): the model's config is then a copy with
    those sizes, and the `config` passed in is left as it was. Without a codebook the LC entries
    start as a Gaussian placeholder that `from_pretrained` or `load_codebook` replaces."""

    model_type = "vqgan-lc-tokenizer"
    config_class = TokenizerConfig
    config: TokenizerConfig

    def __init__(self, config: TokenizerConfig, codebook: torch.Tensor | str | os.PathLike | None = None):
        metadata = None
        if isinstance(codebook, (str, os.PathLike)):
            from ..codebook.io import load_codebook  # the codebook package loads only when a file is given

            book = load_codebook(codebook)
            codebook, metadata = book.vectors, book.metadata
        if codebook is not None and config.quantizer.kind == "lc":
            adopted = adopt_codebook(config.quantizer, codebook)
            if adopted is not config.quantizer:  # the codebook set other sizes
                config = replace(config, quantizer=adopted)
        super().__init__(config)
        ae, q = config.autoencoder, config.quantizer
        # built in this order, so a seed gives the same initial weights as ever
        self.encoder = Encoder(ae)
        self.decoder = Decoder(ae)
        self.quant_conv = nn.Conv2d(ae.z_channels, q.dim, 1)
        self.post_quant_conv = nn.Conv2d(q.dim, ae.z_channels, 1)
        self.quantizer: Quantizer = build_quantizer(q, codebook, metadata)

    @classmethod
    def from_preset(cls, name: str, codebook: torch.Tensor | str | os.PathLike | None = None) -> "VQModel":
        return cls(get_preset(name), codebook)

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """N: the number of codebook entries (token ids lie in [0, N))."""
        return self.quantizer.codebook_size

    num_codes = renamed("codebook_size", "num_codes")

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
        return self.num_parameters(trainable_only=True)

    # --- the pipeline --------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        # Only sizes are read here, never values: under torch.compile they become shape guards,
        # not graph breaks (tests compile encode_latents with fullgraph=True), so the check stays
        # on while compiling; value checks (the index range) are skipped there instead.
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

    def decode_indices(self, indices: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Token ids -> images; equals decoding the quantized latents of `encode`.

        `indices`: (B, h, w), or flat (B, h*w) raster-order ids as generators produce them, with
        `grid=(h, w)` (default: the square grid of the configured resolution)."""
        if indices.ndim == 2:
            h, w = grid or self.token_grid()
            if indices.shape[1] != h * w:
                raise ValueError(f"flat indices of length {indices.shape[1]} do not fill a {h}x{w} token grid; "
                                 "pass grid=(h, w), or indices of shape (B, h, w)")
            indices = indices.reshape(indices.shape[0], h, w)
        if indices.ndim != 3:
            raise ValueError(f"indices must have shape (B, h, w) or (B, h*w), got {tuple(indices.shape)}")
        return self.decode(self.quantizer.indices_to_latents(indices))

    def snap_latents(self, latents: torch.Tensor) -> EncodeOutput:
        """Continuous latents (e.g. sampled by a diffusion model) -> their nearest codebook entries.

        Returns the latents as given, the snapped entries (what the decoder sees after
        quantization) and their token ids, exactly as `encode` would for the same latents."""
        if latents.ndim != 4 or latents.shape[1] != self.quantizer.dim:
            raise ValueError(f"latents must have shape (B, {self.quantizer.dim}, h, w), got {tuple(latents.shape)}")
        was_training = self.quantizer.training
        self.quantizer.eval()
        with torch.no_grad():
            q = self.quantizer(latents)
        self.quantizer.train(was_training)
        return EncodeOutput(latents, q.quantized, q.indices)

    def decode_latents(self, latents: torch.Tensor, snap: bool = True) -> torch.Tensor:
        """Images from continuous latents: snapped to the codebook first (the default, as the
        paper's LDM/DiT/SiT do), or decoded as they are with `snap=False`."""
        return self.decode(self.snap_latents(latents).quantized if snap else latents)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        latents = self.encode_latents(images)
        q = self.quantizer(latents)
        return TokenizerOutput(self.decode(q.quantized), latents, q)
