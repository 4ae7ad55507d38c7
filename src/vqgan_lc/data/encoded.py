"""Caches of images encoded by a tokenizer: token ids (h, w) or continuous latents (D', h, w).

What the generators and the token-map classifiers both read. The cache itself is the shared
sharded cache (`data/cache.py`); this module knows its two kinds and serves its items, with
the optional horizontal mirror stored beside each image. Writing one needs a tokenizer
(`vqgan-lc cache tokens|latents`, `generate/cache.py`).
"""
from __future__ import annotations

import numpy as np
import torch

from vqgan_lc.data.cache import CacheDataset, CacheStore

ENCODED_KINDS = ("tokens", "latents")


def open_encoded_cache(folder: str) -> CacheStore:
    """The token or latent cache in `folder`, or one line saying how to build one."""
    store = CacheStore.open(folder)
    if store.header.get("kind") not in ENCODED_KINDS:
        raise ValueError(f"{folder} is not a token or latent cache; build one with `vqgan-lc cache tokens|latents`")
    return store


class EncodedImageDataset(torch.utils.data.Dataset):
    """Cached items: {"x": tokens (h*w,) int64 or latents (D', h, w) float32, "label": int}.
    With a flipped copy in the cache, item i of epoch e uses the mirror when a hash of
    (seed, epoch, i) says so: the same choice in every run and after a resume."""

    def __init__(self, store: CacheStore, seed: int = 0):
        self.kind = store.header["kind"]
        self.main = CacheDataset(store, self.kind)
        flip_key = f"{self.kind}_flip"
        self.flipped = CacheDataset(store, flip_key) if flip_key in store.keys else None
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.main)

    def __getitem__(self, i: int) -> dict:
        source = self.main
        if self.flipped is not None:
            pick = np.random.default_rng([self.seed, self.epoch, i]).integers(2)
            source = self.flipped if pick else self.main
        item = source[i]
        x = item["x"].long().flatten() if self.kind == "tokens" else item["x"].float()
        return {"x": x, "label": item["label"]}
