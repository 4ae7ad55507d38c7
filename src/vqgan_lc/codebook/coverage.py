"""How much of a codebook the data could use at best: the feature-space ceiling of utilization.

A tokenizer can only use an entry whose region of feature space the data reaches. Assigning
the backbone's own patch features of a set of images straight to the nearest k-means centre
(the space the codebook was built in) measures that reach: the share of entries hit is the
ceiling a tokenizer trained on those images can be compared with, over the same number of
tokens. A held-out ceiling far below the training-region one says the codebook was fitted on
too little data to cover new content (too few vectors per entry), not that training failed.
"""
from __future__ import annotations

import torch

from ..quantize.search import nearest_codes
from ..quantize.usage import code_counts, usage_stats
from .build import extract_in_memory


def feature_ceiling(codebook: torch.Tensor, images, backbone, pool: int | None = None,
                    batch_size: int = 32, device: str = "cpu") -> dict:
    """Utilization of `codebook` (N, C) by the backbone features of `images` (a Dataset or
    batches, as `extract_in_memory` reads them), each vector assigned to its nearest entry.

    Returns `usage_stats` (utilization, num_used, num_tokens, perplexity, top1_share, ...)."""
    vectors, _, _ = extract_in_memory(images, backbone, pool, batch_size, device)
    vectors = torch.from_numpy(vectors).float()
    if vectors.shape[1] != codebook.shape[1]:
        raise ValueError(f"the backbone gives {vectors.shape[1]}-d features but the codebook has "
                         f"{codebook.shape[1]}-d entries: measure the ceiling with the codebook's own backbone")
    indices, _ = nearest_codes(vectors, codebook.float())
    return usage_stats(code_counts(indices, codebook.shape[0]))
