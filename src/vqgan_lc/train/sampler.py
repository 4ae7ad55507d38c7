"""Seeded, rank-sharded, resumable batches: the data order of every training run."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..distributed import DistEnv


class EpochSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation, sharded over ranks, resumable mid-epoch.

    The order is a function of (seed, epoch) only, so a resumed run sees exactly the batches
    an uninterrupted one would. Every rank gets the same number of batches (the tail that does
    not divide evenly is dropped), so DDP never waits on a rank that ran out of data.
    """

    def __init__(self, size: int, batch_size: int, env: DistEnv, seed: int):
        self.size, self.batch_size, self.env, self.seed = size, batch_size, env, seed
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = size // env.world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{size} items cannot fill one batch of {batch_size} on each of {env.world_size} "
                             "processes; lower batch_size or add data")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)[self.env.rank::self.env.world_size].tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]
