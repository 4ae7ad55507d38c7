"""Dataset-scale feature extraction: images -> backbone grid -> average pool -> fp16 shards.

Each image gives pool x pool vectors (the paper pools CLIP's 16x16 grid to 4x4: 16
vectors per image), written in dataset order to fp16 .npy shards of about `shard_mb`.
RAM holds one shard's buffer and the loader's prefetch, whatever the dataset size.

Resume: after each shard, `rank<R>.json` records the shard and the next image to read.
A rerun with the same folder keeps the complete shards and continues from there (a shard
cut short by the interruption is redone); the features equal those of an uninterrupted run.

torchrun: with `torch.distributed` initialised, rank R takes the R-th contiguous slice of
the listing and writes its own shards; after a barrier rank 0 concatenates the per-rank
records, in rank order, into one manifest, so the vector order is the listing's order.

Unreadable images are skipped, counted, and listed in skipped.txt; the run goes on.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vqgan_lc.backbones.registry import FeatureBackbone
from vqgan_lc.codebook.feature_store import (
    MANIFEST,
    SKIPPED,
    FeatureStore,
    dataset_fingerprint,
    write_json_atomic,
)
from vqgan_lc.data import ImageDataset, class_names, collate_skip_corrupt


@dataclass
class ExtractConfig:
    pool: int = 4  # output grid side: pool x pool vectors per image (paper: 4x4)
    batch_size: int = 32
    shard_mb: float = 256  # fp16 megabytes per shard file, approximately
    num_workers: int = 2  # image-decoding processes for the DataLoader (0: in-process)
    device: str = "cpu"
    progress: bool = True  # tqdm bar with images/s (rank 0 only)


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


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _slice_of(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def _load_progress(path: str, header: dict) -> dict:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            progress = json.load(f)
        if progress["header"] != header:
            raise ValueError(f"{path} belongs to another extraction (dataset, backbone or pooling differ); use an empty folder")
        return progress
    return {"header": header, "next": header["slice"][0], "shards": [], "skipped": [], "done": False}


class _ShardWriter:
    """Buffers pooled vectors and commits a shard plus the progress record together."""

    def __init__(self, folder: str, rank: int, progress: dict, progress_path: str, shard_vectors: int):
        self.folder, self.rank, self.progress, self.progress_path = folder, rank, progress, progress_path
        self.shard_vectors = shard_vectors
        self.vectors: list[np.ndarray] = []
        self.ids: list[int] = []
        self.skipped: list[list] = []
        self.count = 0

    def add(self, vectors: np.ndarray, ids: list[int], skipped: list[list], next_index: int) -> None:
        self.vectors.append(vectors)
        self.ids.extend(ids)
        self.skipped.extend(skipped)
        self.count += len(vectors)
        if self.count >= self.shard_vectors:
            self.flush(next_index)

    def flush(self, next_index: int) -> None:
        entry = None
        if self.count:
            name = f"shard-r{self.rank}-{len(self.progress['shards']):05d}.npy"
            path = os.path.join(self.folder, name)
            tmp = f"{path}.tmp-{os.getpid()}.npy"
            np.save(tmp, np.concatenate(self.vectors).astype(np.float16))
            os.replace(tmp, path)
            entry = {"file": name, "num_vectors": self.count, "image_ids": self.ids}
        # The shard is on disk before the record that points at it: a crash in between
        # only costs redoing this shard.
        if entry:
            self.progress["shards"].append(entry)
        self.progress["skipped"].extend(self.skipped)
        self.progress["next"] = next_index
        write_json_atomic(self.progress_path, self.progress)
        self.vectors, self.ids, self.skipped, self.count = [], [], [], 0


def _extract_slice(records, backbone, folder, config, header, rank, lo, hi, max_images) -> dict:
    progress_path = os.path.join(folder, f"rank{rank}.json")
    progress = _load_progress(progress_path, header)
    if progress["done"]:
        return progress
    start = progress["next"]
    stop = hi if max_images is None else min(hi, start + max_images)
    per_image = config.pool * config.pool
    shard_vectors = max(per_image, int(config.shard_mb * 2**20) // (2 * backbone.dim))
    writer = _ShardWriter(folder, rank, progress, progress_path, shard_vectors)
    dataset = ImageDataset(records, size=backbone.input_size, train=False)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=range(start, stop), num_workers=config.num_workers,
                        collate_fn=collate_skip_corrupt)
    backbone = backbone.to(config.device).eval()
    bar = None
    if config.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=hi - lo, initial=start - lo, unit="img", desc="features", dynamic_ncols=True)
    position = start
    for batch in loader:
        batch_end = min(position + config.batch_size, stop)
        kept = batch["index"].tolist()
        reasons = dict(batch["skipped"])
        skipped = [[i, records[i].path, reasons.get(records[i].path, "unreadable")]
                   for i in sorted(set(range(position, batch_end)) - set(kept))]
        vectors = np.empty((0, backbone.dim), dtype=np.float16)
        if kept:
            with torch.inference_mode():
                fmap = backbone(batch["image"].to(config.device))
            vectors = pool_features(fmap, config.pool).reshape(-1, backbone.dim).cpu().numpy().astype(np.float16)
        writer.add(vectors, kept, skipped, batch_end)
        if bar is not None:
            bar.update(batch_end - position)
        position = batch_end
    writer.flush(position)
    if bar is not None:
        bar.close()
    progress["done"] = position >= hi
    write_json_atomic(progress_path, progress)
    return progress


def _merge(folder: str, records, header: dict, world: int) -> dict:
    shards, image_ids, skipped = [], [], []
    for rank in range(world):
        with open(os.path.join(folder, f"rank{rank}.json"), encoding="utf-8") as f:
            progress = json.load(f)
        if not progress["done"]:
            raise RuntimeError(f"{folder}: rank {rank} did not finish its slice; run the extraction again to resume")
        for shard in progress["shards"]:
            shards.append({"file": shard["file"], "num_vectors": shard["num_vectors"]})
            image_ids.extend(shard["image_ids"])
        skipped.extend(progress["skipped"])
    with open(os.path.join(folder, SKIPPED), "w", encoding="utf-8") as f:
        f.writelines(f"{path}\t{reason}\n" for _, path, reason in skipped)
    manifest = {
        **{k: v for k, v in header.items() if k != "slice"},
        "num_listed": len(records),
        "num_skipped": len(skipped),
        "class_names": class_names(records),
        "image_ids": image_ids,
        "labels": [records[i].label for i in image_ids],
        "shards": shards,
    }
    write_json_atomic(os.path.join(folder, MANIFEST), manifest)
    return manifest


def extract_features(records, backbone: FeatureBackbone, folder: str, config: ExtractConfig | None = None,
                     *, max_images: int | None = None) -> FeatureStore | None:
    """Extract (or resume extracting) features of `records` into `folder`.

    Returns the finished `FeatureStore` on every rank, or None when `max_images` (images
    to process in this call, per rank: a way to stop early, used by tests) left work undone.
    """
    config = config or ExtractConfig()
    if not records:
        raise ValueError("extract_features: no images to extract")
    os.makedirs(folder, exist_ok=True)
    rank, world = _rank_and_world()
    lo, hi = _slice_of(len(records), rank, world)
    header = {
        "version": 1, **backbone.describe(), "pooling": pooling_name(config.pool),
        "vectors_per_image": config.pool * config.pool, "fingerprint": dataset_fingerprint(records),
        "world_size": world, "slice": [lo, hi],
    }
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        store = FeatureStore.open(folder)
        if store.origin() != {k: header[k] for k in store.origin()}:
            raise ValueError(f"{folder} holds features of another dataset, backbone or pooling; use an empty folder")
        return store
    started = time.time()
    progress = _extract_slice(records, backbone, folder, config, header, rank, lo, hi, max_images)
    finished = progress["done"]
    if world > 1:
        flags = torch.tensor([int(finished)])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # also the barrier before the merge
        finished = bool(flags.item())
    if finished and rank == 0:
        manifest = _merge(folder, records, header, world)
        if config.progress:
            print(f"features: {len(manifest['image_ids'])} images in {time.time() - started:.1f} s, "
                  f"{manifest['num_skipped']} skipped (listed in {os.path.join(folder, SKIPPED)})")
    if world > 1:
        dist.barrier()
    return FeatureStore.open(folder) if finished else None
