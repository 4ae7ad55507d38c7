"""Learned codebooks: VQGAN (`vq`, high-dimensional) and VQGAN-FC (`fc`, factorized low-dim codes).

FC follows ViT-VQGAN: the latent is projected to a small D' by the tokenizer's 1x1 convs, and
optionally both codes and latents are l2-normalised so the lookup is by cosine similarity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer
from .config import QuantizerConfig


class LearnedQuantizer(Quantizer):
    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        n = config.codebook_size
        self.embedding = nn.Embedding(n, config.dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n, 1.0 / n)  # taming's initialisation

    def latent_codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.config.l2_normalize else z
