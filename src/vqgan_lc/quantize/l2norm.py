"""An l2-normalised low-dimensional learned codebook: the quantizer of LlamaGen's tokenizer.

Source: Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
Generation", and its tokenizer (FoundationVision/LlamaGen, tokenizer/tokenizer_image/
vq_model.py, `VectorQuantizer` with `codebook_embed_dim=8`, `codebook_l2_norm=True`):

- the encoder's output is mapped to D' = 8 by a 1x1 conv (here the tokenizer's quant_conv);
- latents and entries are both l2-normalised before the nearest-entry search, and the
  decoder receives the normalised entry (the straight-through gradient passes through the
  normalisation of the latent);
- entries start as U(-1/N, 1/N) draws, normalised to the unit sphere;
- loss: ||e - sg(z)||^2 + 0.25 ||sg(e) - z||^2, i.e. this project's alpha = 0.25 (commitment),
  beta = 1.0 (codebook), on the normalised vectors. The study sets these weights for this kind.

It differs from `fc` with `l2_normalize` (ViT-VQGAN) only in the entries' start, which is on
the sphere from step 0, and in the loss weights the study gives it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import QuantizerConfig
from .vq import LearnedQuantizer

# LlamaGen's loss weights in this project's naming: ||sg(zq) - z||^2 (commitment) x 0.25,
# ||zq - sg(z)||^2 (codebook) x 1.0.
LOSS_WEIGHTS = {"alpha": 0.25, "beta": 1.0}


class L2NormQuantizer(LearnedQuantizer):
    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1)
