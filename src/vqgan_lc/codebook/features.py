"""Dataset-scale feature extraction: images -> backbone grid -> average pool -> fp16 cache.

Each image gives pool x pool vectors (the paper pools CLIP's 16x16 grid to 4x4: 16 vectors
per image), stored by `vqgan_lc.data.cache` as one (pool*pool, C) fp16 array per image: in
dataset order, in shards of about `shard_mb`, resumable after an interruption, sliced over
torchrun ranks, unreadable images skipped and listed in skipped.txt. `FeatureStore` reads
the folder back as an (N, C) matrix of vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vqgan_lc.backbones.base import FeatureBackbone
from vqgan_lc.codebook.feature_store import VECTORS, FeatureStore, dataset_fingerprint
from vqgan_lc.config import Config
from vqgan_lc.data import ImageDataset
from vqgan_lc.data.cache import read_header, write_cache


@dataclass
class ExtractConfig(Config):
    pool: int | None = 4  # output grid side: pool x pool vectors per image (paper: 4x4); None: every grid cell
    batch_size: int = 32
    shard_mb: float = 256  # fp16 megabytes per shard file, approximately
    num_workers: int = 2  # image-decoding processes for the DataLoader (0: in-process)
    device: str = "cpu"
    progress: bool = True  # tqdm bar with images/s (rank 0 only)

    def check(self) -> None:
        if (self.pool is not None and self.pool < 1) or self.batch_size < 1 or self.num_workers < 0 or self.shard_mb <= 0:
            raise ValueError(f"feature extraction needs pool >= 1 (or None), batch_size >= 1, num_workers >= 0 and "
                             f"shard_mb > 0, got {self.pool}, {self.batch_size}, {self.num_workers}, {self.shard_mb}")


def pool_features(feature_map: torch.Tensor, pool: int | None) -> torch.Tensor:
    """(B, C, h, w) -> (B, pool*pool, C) by average pooling (adaptive when h is not a multiple);
    pool=None keeps the whole grid: (B, h*w, C)."""
    if feature_map.ndim != 4:
        raise ValueError(f"pool_features: expected (B, C, h, w), got shape {tuple(feature_map.shape)}")
    if pool is None:
        return feature_map.float().flatten(2).transpose(1, 2)
    if pool < 1 or pool > min(feature_map.shape[-2:]):
        raise ValueError(f"pool_features: pool {pool} does not fit a {tuple(feature_map.shape[-2:])} grid")
    pooled = F.adaptive_avg_pool2d(feature_map.float(), pool)  # (B, C, pool, pool)
    return pooled.flatten(2).transpose(1, 2)


def pooling_name(pool: int | None) -> str:
    return "none" if pool is None else f"avg{pool}x{pool}"


def feature_encoder(backbone: torch.nn.Module, pool: int | None, device: str) -> Callable[[torch.Tensor], dict]:
    """The cache encoder of both extraction paths: images -> {"vectors": (B, pool*pool, C) fp16}."""

    def encode(images: torch.Tensor) -> dict[str, np.ndarray]:
        pooled = pool_features(backbone(images.to(device)), pool)
        return {VECTORS: pooled.cpu().numpy().astype(np.float16)}

    return encode


def extract_features(records, backbone: FeatureBackbone, folder: str, config: ExtractConfig | None = None,
                     *, max_images: int | None = None) -> FeatureStore | None:
    """Extract (or resume extracting, or reuse) features of `records` into `folder`.

    Returns the finished `FeatureStore` on every rank, or None when `max_images` (images
    to process in this call, per rank: a way to stop early, used by tests) left work undone.
    """
    config = (config or ExtractConfig()).validate()
    if not records:
        raise ValueError("extract_features: no images to extract; check the image folder or list")
    header = {"version": 2, **backbone.describe(), "pooling": pooling_name(config.pool),
              "fingerprint": dataset_fingerprint(records)}
    found = read_header(folder)
    if found is not None and found != header:
        raise ValueError(f"{folder} holds features of another dataset, backbone or pooling; use an empty folder")
    dataset = ImageDataset(records, size=backbone.input_size, train=False)
    backbone = backbone.to(config.device).eval()
    store = write_cache(dataset, feature_encoder(backbone, config.pool, config.device), folder, header=header,
                        batch_size=config.batch_size, num_workers=config.num_workers, shard_mb=config.shard_mb,
                        progress=config.progress, max_items=max_images)
    return None if store is None else FeatureStore(store.folder, store.manifest)
