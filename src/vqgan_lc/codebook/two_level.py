"""Two-level k-means for codebooks too large for one flat k-means (1,000,000 entries over
tens of millions of vectors, where one flat iteration costs vectors x entries distances):

  1. coarse k-means with `cells` centres (default sqrt(k)) on a sample of cells x 256 vectors;
  2. every vector is assigned to its cell, streaming in chunks (bounded memory);
  3. cell c gets k_c entries in proportion to its mass, k_c = floor(k*S_c/n) - floor(k*S_(c-1)/n)
     with S_c the cumulative count, which sums to k exactly and never exceeds the cell's size;
  4. each cell runs its own k-means (`grouped_kmeans`, cells in parallel), and the results
     are concatenated in cell order.
Per-iteration cost drops from n*k to about n*k/cells. Inertia and cluster sizes are
measured inside cells, so the reported inertia is an upper bound of the global one.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vqgan_lc.codebook.kmeans import (
    ASSIGN_CHUNK,
    KMeansResult,
    check_k,
    flat_index,
    as_float32_matrix,
    grouped_kmeans,
    kmeans,
)


def proportional_sizes(counts: np.ndarray, k: int) -> np.ndarray:
    """Split k entries over cells in proportion to their counts; sums to k, each <= its count."""
    cumulative = np.cumsum(np.asarray(counts, dtype=np.int64))
    bounds = cumulative * k // cumulative[-1]
    return np.diff(bounds, prepend=0)


def assign_in_chunks(vectors, centroids: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """Nearest-centroid label of every row, converting at most `chunk` rows to float32 at a time."""
    index = flat_index(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        block = as_float32_matrix(vectors[start:start + chunk])
        labels[start:start + len(block)] = index.search(block, 1)[1][:, 0]
    return labels


def two_level_kmeans(
    vectors,
    k: int,
    *,
    cells: int | None = None,
    iters: int = 20,
    seed: int = 0,
    init: str = "random",
    workers: int | None = None,
    points_per_cell: int = 256,
) -> KMeansResult:
    """k centroids by coarse partition + per-cell k-means sized by cell mass (module docstring)."""
    n = len(vectors)
    check_k(n, k, "two_level_kmeans")
    cells = cells or max(2, int(round(math.sqrt(k))))
    cells = min(cells, k)
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, size=min(n, cells * points_per_cell), replace=False))
    coarse = kmeans(vectors[sample_rows], cells, iters=iters, seed=seed, assign="exact", init=init)
    labels = assign_in_chunks(vectors, coarse.centroids.numpy())
    counts = np.bincount(labels, minlength=cells)
    sizes = proportional_sizes(counts, k)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    groups = [np.sort(order[starts[c]:starts[c + 1]]) for c in range(cells) if sizes[c] > 0]
    ks = [int(s) for s in sizes if s > 0]
    results = grouped_kmeans(vectors, groups, ks, iters=iters, seed=seed + 1, init=init, workers=workers)
    return KMeansResult(
        centroids=torch.cat([r.centroids for r in results]),
        inertia=float(sum(r.inertia for r in results)),
        cluster_sizes=torch.cat([r.cluster_sizes for r in results]),
        iterations=iters,
        reseeded=sum(r.reseeded for r in results),
        assign="two-level",
        extra={"cells": cells, "cell_sizes": ks},
    )
