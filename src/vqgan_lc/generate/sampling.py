"""Turning next-token logits into a token: temperature, top-k, nucleus (top-p), CFG mixing.

All functions take logits of shape (..., V) and work on the last axis. Filters set the
removed entries to -inf, so a softmax afterwards gives them probability exactly 0.
"""
from __future__ import annotations

import torch

from .noise import multinomial


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond).

    scale 1 gives `cond`, scale 0 gives `uncond`, scale > 1 pushes away from the unconditional.
    """
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep exactly the `k` largest logits of each row (ties broken by `topk`); None/0/>=V: keep all."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    values, indices = logits.topk(k, dim=-1)
    # Scattering the survivors into a -inf canvas keeps exactly k even when logits tie at the
    # k-th value (a `logits < kth` mask would keep every tied entry).
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability mass reaches `p`.

    The most likely token is always kept. None or p >= 1: keep all.
    """
    if p is None or p >= 1.0:
        return logits
    if p <= 0.0:
        raise ValueError(f"top_p must lie in (0, 1], got {p}; use top_k=1 or temperature=0 for greedy decoding")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    # Mass of the tokens strictly before each one: a token is needed while that mass is still
    # short of p. The first token has 0 before it, so it always stays.
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` (B, V) -> (B,) int64.

    Order as in LlamaGen: divide by the temperature, top-k, then top-p, then draw from the
    softmax. temperature 0 is greedy (argmax of the raw logits). The generator must live on
    the logits' device.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits of shape (batch, vocab), got {tuple(logits.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and 0 < top_k < scaled.shape[-1]:
        # Same distribution as top_k_filter + softmax over V, but the softmax, nucleus and draw
        # run on the k survivors only: with k = 10% of a 100K vocabulary that is 10x less work
        # per step, and sampling is most of a KV-cached decoding step for small models.
        values, indices = scaled.topk(top_k, dim=-1, sorted=False)
        # In vocabulary order: a value order would swap near-equal logits on rounding noise
        # (cached vs recomputed decoding), which would change what one uniform draw picks.
        indices, order = indices.sort(dim=-1)
        values = values.gather(-1, order)
        choice = multinomial(top_p_filter(values, top_p).softmax(dim=-1), 1, generator=generator)
        return indices.gather(-1, choice).squeeze(-1)
    probs = top_p_filter(scaled, top_p).softmax(dim=-1)
    return multinomial(probs, 1, generator=generator).squeeze(-1)
