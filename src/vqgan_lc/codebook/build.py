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
import logging
import math

import numpy as np
import torch
from torch import nn

from vqgan_lc.backbones.registry import as_backbone
from vqgan_lc.codebook.config import CODEBOOK_MODES
from vqgan_lc.codebook.exemplars import EXEMPLARS_PER_ENTRY, find_exemplars, jpeg_bytes
from vqgan_lc.codebook.feature_store import VECTORS
from vqgan_lc.codebook.features import feature_encoder, pooling_name
from vqgan_lc.codebook.io import Codebook
from vqgan_lc.codebook.kmeans import (
    ASSIGN_CHUNK,
    class_groups,
    KMeansResult,
    as_float32_matrix,
    grouped_kmeans,
    kmeans,
    size_histogram,
)
from vqgan_lc.codebook.two_level import two_level_kmeans
from vqgan_lc.data.cache import encode_in_memory

TWO_LEVEL_MIN_SIZE = 250_000


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
    per_entry = n / size
    info: dict = {"mode": mode, "k": int(size), "seed": seed, "num_vectors": n,
                  "vectors_per_entry": round(per_entry, 2)}
    # k-means centroids of fewer than ~10 vectors each are little more than those vectors:
    # the paper's per-class k-means had ~200 vectors per entry (~1,300 images x 16 per class
    # for 100 entries). Random-select and Gaussian entries do not average vectors at all.
    if mode in ("per-class", "global") and per_entry < 10:
        logging.getLogger(__name__).warning(
            "codebook: only %.1f feature vectors per entry (%d vectors for %d entries; the paper had ~200), "
            "so the k-means entries are close to single vectors; use more images or crops, a larger --pool "
            "(or pool=None, every grid cell), or a smaller --size", per_entry, n, size)
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


def extract_in_memory(images, backbone, pool: int | None = 4, batch_size: int = 32, device: str = "cpu",
                      pictures: list[bytes] | None = None):
    """Pooled features of an in-memory image source: ((n, C) float16 array, labels or None, images).

    The same loop and encoder as `extract_features`, kept in RAM (`encode_in_memory`): `images`
    is a (N, 3, H, W) tensor, an iterable of batches (tensors, dicts, (images, labels) pairs) or
    a Dataset. Labels are None unless every image has one. `pictures`: a list that receives
    every encoded image as JPEG bytes, in order (an in-memory source may not be readable twice).
    """
    backbone = backbone.to(device).eval()
    encode = feature_encoder(backbone, pool, device)
    if pictures is not None:
        features_only = encode

        def encode(batch: torch.Tensor) -> dict:
            pictures.extend(jpeg_bytes(image) for image in batch)
            return features_only(batch)

    encoded = encode_in_memory(images, encode, batch_size=batch_size)
    per_image = encoded.arrays[VECTORS]  # (images, vectors per image, C)
    labels = encoded.labels
    vector_labels = None if (labels < 0).any() else np.repeat(labels, per_image.shape[1])
    return per_image.reshape(-1, per_image.shape[-1]), vector_labels, encoded.num_items


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
    exemplars: int = EXEMPLARS_PER_ENTRY,
) -> Codebook:
    """Codebook straight from images: batches (B, 3, H, W) in [-1, 1], dict batches, or a Dataset.

    `pool`: average-pool each feature grid to pool x pool vectors (paper: 4); None keeps
    every grid cell. Features stay in RAM (fp16); for datasets on disk use
    `extract_features` and the CLI. `exemplars`: vectors recorded per entry (`exemplars.py`;
    the images they come from are kept as JPEG pictures); 0 records none.
    """
    net = as_backbone(backbone, weights)
    pictures: list[bytes] | None = [] if exemplars else None
    vectors, labels, num_images = extract_in_memory(images, net, pool, batch_size, device, pictures=pictures)
    centroids, info = build_codebook_from_vectors(vectors, labels, size, mode, seed, iters=iters, init=init)
    found = None
    per_image = len(vectors) // num_images
    if exemplars and math.isqrt(per_image) ** 2 != per_image:  # non-square images: no cell -> pixel box
        logging.getLogger(__name__).warning("codebook: no exemplars recorded: the images give %d feature vectors "
                                            "each, not a square grid; pass square images", per_image)
    elif exemplars:
        found = find_exemplars(vectors, centroids, vectors_per_image=per_image, k=exemplars, info=info,
                               image_labels=None if labels is None else labels[::per_image], input_size=None,
                               pictures=pictures)
    origin = net.describe()
    metadata = {
        **origin, "pooling": pooling_name(pool), **info, "num_images": num_images,
        "fingerprint": hashlib.sha256(vectors.tobytes()).hexdigest()[:16],
        "fingerprint_of": "features",
    }
    return Codebook(vectors=centroids, metadata=metadata, exemplars=found)
