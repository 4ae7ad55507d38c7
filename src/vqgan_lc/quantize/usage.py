"""Codebook usage statistics from integer counts (never one-hot matrices).

Utilization follows the paper's protocol: distinct entries used at least once over the
whole evaluated set, divided by the codebook size. Counts accumulate over any number of
batches and can be summed across data-parallel processes with a single all-reduce, so the
statistic covers the whole set rather than one process's window.
"""
from __future__ import annotations

import math

import torch
from .. import distributed


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape): int64 ``(num_codes,)``."""
    if num_codes < 1:
        raise ValueError(f"num_codes must be >= 1, got {num_codes}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    # bincount already finds the range (one device sync on CUDA); its checks replace ours.
    try:
        counts = torch.bincount(indices.reshape(-1).long(), minlength=num_codes)
    except RuntimeError as err:
        raise ValueError(f"indices must lie in [0, {num_codes}), got a negative index") from err
    if counts.numel() != num_codes:
        raise ValueError(f"indices must lie in [0, {num_codes}), got index {counts.numel() - 1}")
    return counts


def usage_stats(counts: torch.Tensor) -> dict:
    """Utilization, perplexity and normalised entropy of a count vector ``(N,)``.

    perplexity = exp(H) with H the entropy (nats) of the empirical code distribution: the
    number of equally used codes that would give the same entropy. normalized_entropy =
    H / log(N) lies in [0, 1] (1 = perfectly uniform use). top1_share: the share of all tokens
    that fall on the 1% most used entries (0.01 for perfectly uniform use; how skewed use is
    where utilization alone cannot tell). With no tokens every value is 0.
    """
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor, got shape {tuple(counts.shape)}")
    if bool((counts < 0).any()):
        raise ValueError("counts must be non-negative")
    n = counts.numel()
    c = counts.detach().double()
    total = float(c.sum())
    used = int((c > 0).sum())
    if total == 0:
        entropy = 0.0
    else:
        p = c[c > 0] / total
        entropy = float(-(p * p.log()).sum())
    return {
        "utilization": used / n,
        "perplexity": math.exp(entropy) if total > 0 else 0.0,
        "normalized_entropy": entropy / math.log(n) if n > 1 else 0.0,
        "num_tokens": int(round(total)),
        "num_used": used,
        "codebook_size": n,
        "top1_share": top_share(c, 0.01),
    }


def top_share(counts: torch.Tensor, fraction: float) -> float:
    """Share of all tokens on the `fraction` most used entries (at least one entry); 0 without tokens."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    k = max(1, int(round(fraction * counts.numel())))
    return float(counts.double().topk(k).values.sum()) / total


class UsageAccumulator:
    """Running per-code counts over many batches (and, after ``all_reduce``, many processes).

    ``all_reduce`` sums the counts in place across the default process group; call it once,
    right before reading ``stats()``, then ``reset()`` before the next window.
    """

    def __init__(self, num_codes: int, device: torch.device | str | None = None):
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        self.num_codes = num_codes
        self.counts = torch.zeros(num_codes, dtype=torch.int64, device=device)

    def update(self, indices: torch.Tensor) -> None:
        """Add the codes in ``indices`` (any shape of integer ids in [0, num_codes))."""
        self.counts += code_counts(indices.to(self.counts.device), self.num_codes)

    def all_reduce(self) -> None:
        """Sum the counts across processes (one collective); a no-op without a process group."""
        distributed.all_reduce(self.counts)

    def stats(self) -> dict:
        return usage_stats(self.counts)

    def reset(self) -> None:
        self.counts.zero_()
