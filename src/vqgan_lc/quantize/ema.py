"""VQGAN-EMA: codebook entries are exponential moving averages of the latents assigned to them.

No gradient reaches the codebook; the loss keeps only the commitment (alpha) term. Cluster
sizes and sums are accumulated with `bincount` / `index_add_` (never one-hots) and summed
across processes when torch.distributed is initialised, so every rank keeps the same codebook.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Quantizer
from .config import QuantizerConfig
from .. import distributed


class EMAQuantizer(Quantizer):
    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        n, d = config.codebook_size, config.dim
        embed = torch.randn(n, d)
        self.register_buffer("embed", embed)
        # Sizes start at one (not zero) so never-assigned entries keep their initial value
        # instead of being divided by the smoothing epsilon.
        self.register_buffer("cluster_size", torch.ones(n))
        self.register_buffer("embed_avg", embed.clone())

    def latent_codebook(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def update_codebook(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        cfg = self.config
        z_flat = z_flat.float()
        counts = torch.bincount(indices, minlength=cfg.codebook_size).float()
        sums = torch.zeros_like(self.embed_avg).index_add_(0, indices, z_flat)
        if distributed.is_initialized():
            packed = distributed.all_reduce(torch.cat([counts[:, None], sums], dim=1))  # one call for both
            counts, sums = packed[:, 0], packed[:, 1:]
        self.cluster_size.mul_(cfg.ema_decay).add_(counts, alpha=1 - cfg.ema_decay)
        self.embed_avg.mul_(cfg.ema_decay).add_(sums, alpha=1 - cfg.ema_decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + cfg.ema_eps) / (total + cfg.codebook_size * cfg.ema_eps) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    def loss(self, z_flat: torch.Tensor, zq_flat: torch.Tensor) -> torch.Tensor:
        return self.config.alpha * F.mse_loss(z_flat, zq_flat.detach())
