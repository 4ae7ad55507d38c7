"""Random draws that belong to samples, not to batches.

`RowGenerators` holds one `torch.Generator` per sample, seeded from (seed, global sample index).
Every random number a sampler draws for a batch (initial noise, DDPM/SDE step noise, GPT's
token choices) comes row by row from that sample's own generator, so a sample is the same
whatever batch it is drawn in and however many ranks share the work. The samplers call
`randn` and `multinomial` below, which accept a plain `torch.Generator` (or None) as well.
"""
from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a sampling run seeded with `seed` (a hash, so that
    neighbouring indices and seeds give unrelated streams)."""
    digest = hashlib.sha256(f"vqgan-lc sample {seed} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RowGenerators:
    """One generator per batch row; `rows` global sample indices of a run seeded with `seed`."""

    def __init__(self, seed: int, indices: list[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(sample_seed(seed, i)) for i in indices]

    def __len__(self) -> int:
        return len(self.generators)

    def _rows(self, shape) -> int:
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"a per-sample draw needs {len(self.generators)} rows, got shape {tuple(shape)}")
        return shape[0]

    def randn(self, shape, dtype=None, device=None) -> torch.Tensor:
        self._rows(shape)
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=self.device) for g in self.generators]
        return torch.stack(rows).to(device or self.device)

    def multinomial(self, probs: torch.Tensor, num_samples: int) -> torch.Tensor:
        self._rows(probs.shape)
        rows = [torch.multinomial(p.to(self.device), num_samples, generator=g) for p, g in zip(probs, self.generators)]
        return torch.stack(rows).to(probs.device)


def randn(shape, *, generator=None, dtype=None, device=None) -> torch.Tensor:
    if isinstance(generator, RowGenerators):
        return generator.randn(shape, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def multinomial(probs: torch.Tensor, num_samples: int, *, generator=None) -> torch.Tensor:
    if isinstance(generator, RowGenerators):
        return generator.multinomial(probs, num_samples)
    return torch.multinomial(probs, num_samples, generator=generator)
