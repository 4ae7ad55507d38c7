"""From feature vectors (or images) to a codebook, in one of four modes.

- `per-class` (the paper): k-means inside each class, size/num_classes entries per class,
  concatenated in label order (ImageNet: 100 x 1000 = 100,000). Entry rows
  [offset_c, offset_c + entries_per_class[c]) belong to class c; when the size does not
  divide evenly, the first size % num_classes classes get one more entry.
- `global`: one k-means over all vectors, for class-free data; from `TWO_LEVEL_MIN_SIZE`
  entries on it switches to the two-level scheme (`two_level.py`).
- `random-select`: N distinct feature vectors drawn at random (the paper's Table 6 baseline).
- `gaussian`: N draws from a Gaussian with the features' per-channel mean and std (the
  random-init ablation, at the scale of the features rather than N(0, 1)).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vqgan_lc.backbones.registry import as_backbone
from vqgan_lc.codebook.features import pool_features, pooling_name
from vqgan_lc.codebook.io import Codebook
from vqgan_lc.codebook.kmeans import (
    ASSIGN_CHUNK,
    KMeansResult,
    as_float32_matrix,
    grouped_kmeans,
    kmeans,
    size_histogram,
)
from vqgan_lc.codebook.two_level import two_level_kmeans

CODEBOOK_MODES = ("per-class", "global", "random-select", "gaussian")
TWO_LEVEL_MIN_SIZE = 250_000


def class_groups(labels: np.ndarray) -> tuple[list[int], list[slice | np.ndarray]]:
    """Sorted class labels and, per class, its rows (a slice when the rows are contiguous)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes, first, counts = np.unique(labels, return_index=True, return_counts=True)
    if np.all(np.diff(labels) >= 0):  # sorted listing (class folders): contiguous rows
        return classes.tolist(), [slice(int(f), int(f + c)) for f, c in zip(first, counts)]
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return classes.tolist(), [order[bounds[i]:bounds[i + 1]] for i in range(len(classes))]


def split_evenly(size: int, parts: int) -> list[int]:
    base, extra = divmod(size, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _channel_stats(vectors) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std, streamed in chunks (float64 sums)."""
    total = total_sq = None
    for start in range(0, len(vectors), ASSIGN_CHUNK):
        block = as_float32_matrix(vectors[start:start + ASSIGN_CHUNK]).astype(np.float64)
        total = block.sum(0) if total is None else total + block.sum(0)
        total_sq = (block**2).sum(0) if total_sq is None else total_sq + (block**2).sum(0)
    mean = total / len(vectors)
    return mean, np.sqrt(np.maximum(total_sq / len(vectors) - mean**2, 0.0))


def _kmeans_info(result: KMeansResult) -> dict:
    return {
        "inertia": result.inertia,
        "reseeded": result.reseeded,
        "empty_clusters": result.empty,
        "iterations": result.iterations,
        "assign": result.assign,
        "cluster_size_histogram": [list(b) for b in size_histogram(result.cluster_sizes)],
    }


def build_codebook_from_vectors(
    vectors,
    labels: np.ndarray | torch.Tensor | None,
    size: int,
    mode: str = "global",
    seed: int = 0,
    *,
    iters: int = 20,
    assign: str = "auto",
    init: str = "random",
    workers: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """(size, C) float32 codebook and an info dict (mode, k, seed, inertia, histogram, ...)."""
    if mode not in CODEBOOK_MODES:
        raise ValueError(f"unknown codebook mode {mode!r}; choose from {', '.join(CODEBOOK_MODES)}")
    n = len(vectors)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"codebook size must be a positive integer, got {size!r}")
    if size > n and mode != "gaussian":  # only the Gaussian draw needs no vector per entry
        raise ValueError(f"codebook size {size} exceeds the {n} feature vectors available; extract more images or lower --size")
    info: dict = {"mode": mode, "k": int(size), "seed": seed, "num_vectors": n}
    if mode == "per-class":
        if labels is None:
            raise ValueError("per-class mode needs class labels (class sub-folders); use mode 'global' for class-free data")
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} vectors")
        classes, groups = class_groups(labels)
        if size < len(classes):
            raise ValueError(f"per-class codebook of {size} entries cannot cover {len(classes)} classes")
        ks = split_evenly(size, len(classes))
        results = grouped_kmeans(vectors, groups, ks, iters=iters, seed=seed, assign=assign, init=init, workers=workers)
        merged = KMeansResult(torch.cat([r.centroids for r in results]), sum(r.inertia for r in results),
                              torch.cat([r.cluster_sizes for r in results]), iters,
                              sum(r.reseeded for r in results), results[0].assign)
        info.update(_kmeans_info(merged), classes=classes, entries_per_class=ks)
        return merged.centroids, info
    if mode == "global":
        if size >= TWO_LEVEL_MIN_SIZE:
            result = two_level_kmeans(vectors, size, iters=iters, seed=seed, init=init, workers=workers)
        else:
            result = kmeans(vectors, size, iters=iters, seed=seed, assign=assign, init=init)
        info.update(_kmeans_info(result))
        return result.centroids, info
    if mode == "random-select":
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        return torch.from_numpy(as_float32_matrix(vectors[rows])), info
    mean, std = _channel_stats(vectors)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(size, len(mean), generator=generator, dtype=torch.float64)
    return (noise * torch.from_numpy(std) + torch.from_numpy(mean)).float(), info


# ----------------------------------------------------------------------------- from images


def _batches(images, batch_size: int) -> Iterable:
    if isinstance(images, Dataset):
        from vqgan_lc.data import collate_skip_corrupt

        first = images[0]
        collate = collate_skip_corrupt if isinstance(first, dict) or first is None else None
        return DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if isinstance(images, torch.Tensor):
        return images.split(batch_size)
    return images


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch is a tensor, a dict with "image" (and "label"), or an (images, labels) pair."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        return batch["image"], batch.get("label")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"build_codebook: cannot read images from a batch of type {type(batch).__name__}")


def extract_in_memory(images, backbone, pool: int | None = 4, batch_size: int = 32, device: str = "cpu"):
    """Pooled features of an in-memory image source: ((n, C) float16 array, labels or None, images)."""
    backbone = backbone.to(device).eval()
    chunks, labels, num_images = [], [], 0
    for batch in _batches(images, batch_size):
        pixels, batch_labels = _unpack(batch)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"build_codebook: expected image batches (B, 3, H, W) in [-1, 1], got {tuple(pixels.shape)}")
        if pixels.shape[0] == 0:
            continue
        with torch.inference_mode():
            pooled = pool_features(backbone(pixels.to(device)), pool)  # (B, vectors per image, C)
        chunks.append(pooled.reshape(-1, pooled.shape[-1]).cpu().numpy().astype(np.float16))
        if batch_labels is not None:
            labels.append(torch.as_tensor(batch_labels).repeat_interleave(pooled.shape[1]))
        num_images += pixels.shape[0]
    if not chunks:
        raise ValueError("build_codebook: the image source yielded no images")
    vectors = np.concatenate(chunks)
    vector_labels = torch.cat(labels).numpy() if len(labels) == len(chunks) else None
    if vector_labels is not None and (vector_labels < 0).any():
        vector_labels = None  # unlabelled items (label -1)
    return vectors, vector_labels, num_images


def build_codebook(
    images,
    size: int,
    *,
    backbone: str | nn.Module = "efficientnet-lite0",
    weights: str | None = None,
    pool: int | None = 4,
    mode: str = "global",
    seed: int = 0,
    iters: int = 20,
    batch_size: int = 32,
    device: str = "cpu",
    init: str = "random",
) -> Codebook:
    """Codebook straight from images: batches (B, 3, H, W) in [-1, 1], dict batches, or a Dataset.

    `pool`: average-pool each feature grid to pool x pool vectors (paper: 4); None keeps
    every grid cell. Features stay in RAM (fp16); for datasets on disk use
    `extract_features` and the CLI.
    """
    net = as_backbone(backbone, weights)
    vectors, labels, num_images = extract_in_memory(images, net, pool, batch_size, device)
    centroids, info = build_codebook_from_vectors(vectors, labels, size, mode, seed, iters=iters, init=init)
    origin = net.describe()
    metadata = {
        **origin, "pooling": pooling_name(pool), **info, "num_images": num_images,
        "fingerprint": hashlib.sha256(vectors.tobytes()).hexdigest()[:16],
        "fingerprint_of": "features",
    }
    return Codebook(vectors=centroids, metadata=metadata)
