"""VQGAN-EMA as the field trains it today: a data-dependent start and dead-code restarts.

Source: SoundStream (Zeghidour et al. 2021, section III-C: "the codebook is initialised by
running k-means on the first training batch, and any codebook vector that has not been
assigned any input frame for several batches is replaced by an input frame randomly sampled
within the current batch") and Jukebox (Dhariwal et al. 2020, appendix A: entries whose
EMA usage falls below a threshold are re-seeded from random encoder outputs of the batch).
Here the start is a random draw of the first batch's latents (Jukebox's choice; SoundStream's
k-means of one batch of 1,024 latents would give at most as many distinct entries), and an
entry whose EMA cluster size falls below `restart_threshold` is replaced by a random latent
of the current batch, its statistics reset to one assignment.

The EMA update itself is the reference-faithful one in `ema.py` (kind "ema", whose entries
start as N(0, I)), which stays as its own baseline.

Under data parallelism the dead set is decided from all-reduced cluster sizes, so every rank
agrees on it, and the replacement latents are drawn by rank 0 and broadcast: the codebook
stays identical on every process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .. import distributed
from .config import QuantizerConfig
from .ema import EMAQuantizer


class RestartEMAQuantizer(EMAQuantizer):
    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        # 0 until the first training batch has seeded the entries; saved, so a resumed run
        # never re-seeds a trained codebook.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self.restarts = 0  # entries re-seeded so far in this process (a diagnostic, not state)

    def _draw_latents(self, z_flat: torch.Tensor, count: int) -> torch.Tensor:
        """`count` random rows of rank 0's `z_flat` (distinct rows, or with replacement when the
        batch is smaller), the same on every rank. Repeated rows get a small jitter (Jukebox does the same) so
        copies of one latent are distinct entries that can drift apart."""
        if not distributed.is_initialized() or distributed.rank() == 0:
            m = z_flat.shape[0]
            rows = (torch.randperm(m, device=z_flat.device)[:count] if count <= m
                    else torch.randint(0, m, (count,), device=z_flat.device))
            drawn = z_flat[rows].float()
            if count > m:
                scale = 0.01 / z_flat.shape[1] ** 0.5
                drawn = drawn + scale * torch.randn_like(drawn)
        else:
            drawn = torch.empty(count, z_flat.shape[1], device=z_flat.device)
        if distributed.is_initialized():
            device = distributed.backend_device()
            moved = drawn.to(device)
            dist.broadcast(moved, src=0)
            drawn = moved.to(z_flat.device)
        return drawn

    @torch.no_grad()
    def _seed(self, rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Entries `rows` become `vectors`, with the statistics of one assignment each."""
        self.embed[rows] = vectors
        self.embed_avg[rows] = vectors
        self.cluster_size[rows] = 1.0

    @torch.no_grad()
    def update_codebook(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        if not bool(self.initialized):
            # The first batch's search ran against the N(0, I) placeholder; from the next step
            # on, every search sees entries drawn from the latents.
            everything = torch.arange(self.codebook_size, device=self.embed.device)
            self._seed(everything, self._draw_latents(z_flat, self.codebook_size).to(self.embed))
            self.initialized.fill_(1)
            return
        super().update_codebook(z_flat, indices)
        dead = torch.nonzero(self.cluster_size < self.config.restart_threshold).flatten()
        if dead.numel():
            self._seed(dead, self._draw_latents(z_flat, dead.numel()).to(self.embed))
            self.restarts += dead.numel()
