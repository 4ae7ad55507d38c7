"""Codebook usage statistics from integer counts (never one-hot matrices).

Utilization follows the paper's protocol: distinct entries used at least once over the
whole evaluated set, divided by the codebook size. Counts accumulate over any number of
batches and can be summed across data-parallel processes with a single all-reduce, so the
statistic covers the whole set rather than one process's window.
"""
from __future__ import annotations

import math
import warnings

import torch

from .. import distributed
from ..config import renamed


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape): int64 ``(codebook_size,)``."""
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    # bincount already finds the range (one device sync on CUDA); its checks replace ours.
    try:
        counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size)
    except RuntimeError as err:
        raise ValueError(f"indices must lie in [0, {codebook_size}), got a negative index") from err
    if counts.numel() != codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size}), got index {counts.numel() - 1}")
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

    num_codes = renamed("codebook_size", "num_codes")

    def __init__(self, codebook_size: int | None = None, device: torch.device | str | None = None, *,
                 num_codes: int | None = None):
        if num_codes is not None:  # the keyword's former name
            warnings.warn("UsageAccumulator(num_codes=...) is deprecated; use codebook_size", DeprecationWarning,
                          stacklevel=2)
            codebook_size = num_codes if codebook_size is None else codebook_size
        if codebook_size is None or codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64, device=device)

    def update(self, indices: torch.Tensor) -> None:
        """Add the codes in ``indices`` (any shape of integer ids in [0, codebook_size))."""
        self.counts += code_counts(indices.to(self.counts.device), self.codebook_size)

    def all_reduce(self) -> None:
        """Sum the counts across processes (one collective); a no-op without a process group."""
        distributed.all_reduce(self.counts)

    def stats(self) -> dict:
        return usage_stats(self.counts)

    def reset(self) -> None:
        self.counts.zero_()
