"""SimVQ: a frozen Gaussian codebook in the latent space, moved as a whole by one learned linear map.

Source: Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with
One Linear Layer" (arXiv 2411.02038; youngsheen/SimVQ, taming/modules/vqvae/quantize.py):
entries C ~ N(0, D'^-1) of shape (N, D') stay frozen; the latent codebook is C W + b with
W a learned D' x D' matrix (torch's default Linear initialisation); loss
||CW - sg(z)||^2 + 0.25 ||sg(CW) - z||^2, i.e. alpha = 0.25, beta = 1.0 here.

How it differs from VQGAN-LC with `--mode gaussian` (the paper's Table 6 "random
initialisation" row): there the frozen entries are Gaussian draws at the *backbone features'*
mean and standard deviation in C = 112 (CLIP: 768) dimensions, standardised, then mapped by a
C -> D' projector initialised N(0, D'^-1/2) with zero bias; here the frozen entries are drawn
directly in the D'-dimensional latent space at scale D'^-1/2, and the map is square (D' -> D'),
so the latent codebook is a linear image of an isotropic Gaussian cloud of full rank D' from the
first step. The loss weights differ too (LC: alpha 1.0, beta 0.33).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer
from .config import QuantizerConfig

LOSS_WEIGHTS = {"alpha": 0.25, "beta": 1.0}


class SimVQQuantizer(Quantizer):
    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        n, d = config.codebook_size, config.dim
        # frozen, but saved with the model (a buffer receives no gradient and no optimizer state)
        self.register_buffer("codebook", torch.randn(n, d) * d ** -0.5)
        self.projector = nn.Linear(d, d)

    def latent_codebook(self) -> torch.Tensor:
        return self.projector(self.codebook)
