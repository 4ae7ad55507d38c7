"""VQGAN-LC: a frozen (k-means-initialised) codebook mapped into the latent space by a trainable projector.

Every entry moves together through the shared projector, so entries that were never chosen
still follow the latent distribution: that is why 100,000+ entries stay ~99% used.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from .base import Quantizer
from .config import QuantizerConfig

log = logging.getLogger(__name__)


def adopt_codebook(config: QuantizerConfig, codebook: torch.Tensor,
                   source: str = "codebook tensor") -> QuantizerConfig:
    """The one rule for a given codebook: its (N, C) shape decides `codebook_size` and
    `codebook_dim` (the projector adapts to C); a change is logged, never silent.

    Returns `config` itself when the shape already agrees, else a validated copy: the config
    a caller passed in (say, the one its training config holds) is never changed."""
    if not isinstance(codebook, torch.Tensor):
        raise TypeError(f"an LC codebook is an (N, C) tensor, got {type(codebook).__name__}; read a codebook "
                        "file with vqgan_lc.codebook.load_codebook(path).vectors, or pass the path to VQModel")
    if codebook.ndim != 2:
        raise ValueError(f"an LC codebook is an (N, C) matrix, got shape {tuple(codebook.shape)}")
    n, c = map(int, codebook.shape)
    if (n, c) == (config.codebook_size, config.codebook_dim):
        return config
    log.info("%s sets codebook_size=%d, codebook_dim=%d (the config said %d x %d)", source, n, c,
             config.codebook_size, config.codebook_dim)
    return replace(config, codebook_size=n, codebook_dim=c).validate()


def standardize(codebook: torch.Tensor) -> torch.Tensor:
    """Centre the entries and scale them to unit root-mean-square norm (see QuantizerConfig)."""
    centred = codebook - codebook.mean(dim=0, keepdim=True)
    rms = centred.square().sum(dim=1).mean().sqrt().clamp_min(1e-12)
    return centred / rms


def build_projector(kind: str, cin: int, cout: int, hidden: int) -> nn.Module:
    if kind == "linear":
        proj = nn.Linear(cin, cout, bias=True)
        nn.init.normal_(proj.weight, std=cout ** -0.5)  # paper: N(0, D'^-0.5)
        nn.init.zeros_(proj.bias)
        return proj
    if kind == "mlp":
        return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, cout))
    return nn.Identity()


class LCQuantizer(Quantizer):
    """`codebook`: the frozen (N, C) entries as a tensor; its shape decides N and C
    (`adopt_codebook`, on a copy of `config`). `metadata`: what the codebook file records about
    its origin (backbone, layer, pooling, k-means mode, seed, data fingerprint), kept as
    provenance. Reading codebook files is the caller's part (`codebook.load_codebook`, or
    `VQModel`, which takes a path)."""

    def __init__(self, config: QuantizerConfig, codebook: torch.Tensor | None = None,
                 metadata: dict | None = None):
        if codebook is not None:
            config = adopt_codebook(config, codebook)  # before the base class keeps the config
        super().__init__(config)
        # The file's scalar metadata. Not part of the config, so it never changes what the model
        # computes or how runs compare; save_pretrained keeps it for the model card.
        self.provenance = {"codebook": {k: v for k, v in metadata.items()
                                        if isinstance(v, (str, int, float, bool)) or v is None}} if metadata else {}
        if codebook is None:
            # Placeholder until a k-means codebook is loaded (from_pretrained / load_codebook);
            # random Gaussian is also the paper's "random init" ablation (5.4% utilization).
            # Under torch.device("meta") (from_pretrained) this allocates nothing.
            codebook = torch.randn(config.codebook_size, config.codebook_dim)
        codebook = codebook.detach().float().clone()
        if config.standardize_codebook:
            codebook = standardize(codebook)
        if config.train_codebook:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)  # frozen, but saved with the model
        self.projector = build_projector(config.projector, config.codebook_dim, config.dim,
                                         config.projector_hidden)

    def latent_codebook(self) -> torch.Tensor:
        return self.projector(self.codebook)

    @torch.no_grad()
    def load_codebook(self, codebook: torch.Tensor) -> None:
        """Replace the frozen entries (e.g. with a k-means codebook file's vectors)."""
        if tuple(codebook.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codebook of shape {tuple(codebook.shape)} does not fit this quantizer "
                             f"({self.config.codebook_size} x {self.config.codebook_dim})")
        codebook = codebook.detach().float()
        if self.config.standardize_codebook:
            codebook = standardize(codebook)
        self.codebook.copy_(codebook.to(self.codebook))
        self._cache = None
