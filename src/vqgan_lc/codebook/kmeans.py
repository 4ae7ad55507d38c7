"""k-means on faiss: one problem (`kmeans`) and many small ones (`grouped_kmeans`).

Engine. faiss's `Clustering` runs Lloyd iterations in C++: seeded init (random vectors
of the data, or k-means++ for small k), centroid update, and re-seeding of empty
clusters by splitting a large one (counted in `KMeansResult.reseeded`; what cannot be
filled, e.g. with exact duplicate vectors, shows in `KMeansResult.empty`). faiss
subsamples to 256 points per centroid by default and stops at a plateau; here it uses
every vector unless `max_points_per_centroid` asks otherwise, and runs all `iters`.

Assignment. Each iteration assigns every vector to its nearest centroid through a faiss
index. `assign="exact"` uses a flat (brute-force) index, on GPU when faiss has one.
`assign="ivf"` puts the centroids in an inverted file: a coarse quantizer of ~3*sqrt(k)
cells, trained once on the data, and each vector looks at the centroids of its `nprobe`
(8) nearest cells only. For k in the thousands this does ~30x fewer distance
computations at a cost in inertia well under 1% (see benchmarks/kmeans.py); a vector
whose probed cells hold no centroid is left out of that update, never mis-assigned.
`assign="auto"` picks ivf on CPU for k >= 4096, exact otherwise.

Many small problems (per-class codebooks: 1000 classes x 100 centres). One faiss call on
a 2,000 x 100 problem is mostly fixed overhead and OpenMP synchronisation, so the groups
run concurrently on a thread pool, each faiss call single-threaded (faiss releases the
GIL). Results come back in group order and each group's seed is `seed + group index`, so
the output does not depend on the number of workers.

The two-level scheme for codebooks of ~1,000,000 entries lives in `two_level.py`.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from vqgan_lc._faiss import require_faiss


class _FaissOnFirstUse:
    """Stands for the faiss module and imports it on the first attribute read, so importing
    this module (and the package around it) does not load faiss before k-means runs."""

    def __getattr__(self, name: str):
        return getattr(require_faiss("k-means"), name)


faiss = _FaissOnFirstUse()

AUTO_IVF_MIN_K = 4096
IVF_NPROBE = 8
ASSIGN_CHUNK = 65_536  # vectors per streamed assignment block: 65,536 x 4 KB at 1024-d = 256 MB at most
ASSIGN_MODES = ("auto", "exact", "ivf")
SMALL_PROBLEM = 1 << 22  # vectors x centroids below which one thread is faster
# k-means++ costs k sequential passes over the data: fine for small k, hours at 100,000.
INIT_METHODS = {  # name -> faiss constant, read when k-means runs
    "random": "ClusteringInitMethod_RANDOM",
    "k-means++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
}


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, C) float32
    inertia: float  # sum of squared distances of the vectors to their assigned centroid
    cluster_sizes: torch.Tensor  # (k,) int64, vectors per centroid in the final assignment
    iterations: int
    reseeded: int = 0  # empty clusters faiss re-seeded by splitting a large one
    assign: str = "exact"
    extra: dict = field(default_factory=dict)

    @property
    def empty(self) -> int:
        """Centroids no vector chose in the end: possible only when the data has exact
        duplicates (splitting a cluster of identical vectors cannot separate them)."""
        return int((self.cluster_sizes == 0).sum())

    def size_histogram(self) -> list[tuple[int, int, int]]:
        return size_histogram(self.cluster_sizes)


def size_histogram(sizes: torch.Tensor | np.ndarray) -> list[tuple[int, int, int]]:
    """Cluster sizes binned as (low, high, count): [0,0], [1,1], [2,3], [4,7], ... (powers of two)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return []
    bins = [(0, 0, int((sizes == 0).sum()))]
    low = 1
    while low <= sizes.max():
        high = 2 * low - 1
        bins.append((low, high, int(((sizes >= low) & (sizes <= high)).sum())))
        low *= 2
    return bins


def as_float32_matrix(vectors, what: str = "vectors") -> np.ndarray:
    """Any (n, C) tensor or array (fp16 memmap included) -> contiguous float32 numpy."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(np.asarray(vectors), dtype=np.float32)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{what}: expected an (n, C) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return array


def check_k(n: int, k: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{what}: the number of centroids must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"{what}: cannot make {k} centroids from {n} vectors; use more data or a smaller size")


def _gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _resolve_assign(assign: str, k: int) -> str:
    if assign not in ASSIGN_MODES:
        raise ValueError(f"unknown assign mode {assign!r}; choose from {', '.join(ASSIGN_MODES)}")
    if assign == "auto":
        return "ivf" if k >= AUTO_IVF_MIN_K and _gpu_count() == 0 else "exact"
    return assign


def flat_index(dim: int):
    index = faiss.IndexFlatL2(dim)
    return faiss.index_cpu_to_all_gpus(index) if _gpu_count() else index


def _ivf_index(x: np.ndarray, k: int, seed: int):
    """Inverted file over the centroids; its coarse cells are learnt once, from the data."""
    dim = x.shape[1]
    nlist = max(1, min(int(round(3 * math.sqrt(k))), k // 8))
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # silence faiss's "too few points" warning
    sample = np.random.default_rng(seed).choice(len(x), size=min(len(x), nlist * 64), replace=False)
    index.train(x[np.sort(sample)])
    index.nprobe = min(IVF_NPROBE, nlist)
    return index


def _final_assignment(x: np.ndarray, centroids: np.ndarray, index) -> tuple[np.ndarray, np.ndarray]:
    """Distances and labels of every vector against the final centroids, in bounded chunks."""
    index.reset()
    index.add(centroids)
    dist = np.empty(len(x), dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), ASSIGN_CHUNK):
        d, i = index.search(x[start:start + ASSIGN_CHUNK], 1)
        dist[start:start + len(d)], labels[start:start + len(d)] = d[:, 0], i[:, 0]
    missing = np.flatnonzero(labels < 0)  # ivf only: probed cells without a centroid
    if missing.size:
        exact = faiss.IndexFlatL2(x.shape[1])
        exact.add(centroids)
        d, i = exact.search(x[missing], 1)
        dist[missing], labels[missing] = d[:, 0], i[:, 0]
    return dist, labels


class _OmpThreads:
    """Temporarily set faiss's OpenMP thread count (None: leave it)."""

    def __init__(self, threads: int | None):
        self.threads, self.previous = threads, None

    def __enter__(self):
        if self.threads:
            self.previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.threads)

    def __exit__(self, *exc):
        if self.previous:
            faiss.omp_set_num_threads(self.previous)


def kmeans(
    vectors,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    assign: str = "auto",
    init: str = "random",
    max_points_per_centroid: int | None = None,
    threads: int | None = None,
    verbose: bool = False,
) -> KMeansResult:
    """Lloyd k-means of (n, C) vectors into k centroids, deterministic under `seed`.

    `max_points_per_centroid`: train on a random subsample of k * this many vectors (faiss's
    own subsampling); None trains on every vector. The final assignment always covers all.
    """
    x = as_float32_matrix(vectors)
    check_k(len(x), k, "kmeans")
    if iters < 1:
        raise ValueError(f"kmeans: iters must be >= 1, got {iters}")
    mode = _resolve_assign(assign, k)
    if init not in INIT_METHODS:
        raise ValueError(f"kmeans: unknown init {init!r}; choose from {', '.join(INIT_METHODS)}")
    params = faiss.ClusteringParameters()
    params.init_method = getattr(faiss, INIT_METHODS[init])
    params.niter = iters
    if hasattr(params, "early_stop_threshold"):
        params.early_stop_threshold = -1.0  # run exactly `iters` iterations (faiss stops at a plateau)
    params.seed = seed
    params.verbose = verbose
    params.min_points_per_centroid = 1  # a few points per centroid is legitimate here
    params.max_points_per_centroid = max_points_per_centroid or (len(x) // k + 1)
    clustering = faiss.Clustering(x.shape[1], k, params)
    if threads is None and len(x) * k < SMALL_PROBLEM:
        threads = 1  # OpenMP start-up and barriers would cost more than the arithmetic
    with _OmpThreads(threads):
        index = _ivf_index(x, k, seed) if mode == "ivf" else flat_index(x.shape[1])
        clustering.train(x, index)
        centroids = faiss.vector_to_array(clustering.centroids).reshape(k, x.shape[1])
        dist, labels = _final_assignment(x, centroids, index)
    stats = clustering.iteration_stats
    reseeded = sum(stats.at(i).nsplit for i in range(stats.size()))
    return KMeansResult(
        centroids=torch.from_numpy(centroids.copy()),
        inertia=float(dist.astype(np.float64).sum()),
        cluster_sizes=torch.from_numpy(np.bincount(labels, minlength=k)),
        iterations=int(stats.size()),
        reseeded=int(reseeded),
        assign=mode,
    )


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def grouped_kmeans(
    vectors,
    groups: list[np.ndarray | slice],
    ks: list[int],
    *,
    iters: int = 20,
    seed: int = 0,
    assign: str = "auto",
    init: str = "random",
    workers: int | None = None,
) -> list[KMeansResult]:
    """An independent k-means per group of rows (row indices or a slice), results in group order.

    Only one group per worker is held in float32 at a time, so `vectors` may be an fp16
    memory map far larger than RAM.
    """
    if len(groups) != len(ks):
        raise ValueError(f"grouped_kmeans: {len(groups)} groups but {len(ks)} sizes")
    for g, (rows, k) in enumerate(zip(groups, ks)):
        n = len(range(*rows.indices(len(vectors)))) if isinstance(rows, slice) else len(rows)
        check_k(n, k, f"group {g}")
    workers = workers or default_workers()

    def run(g: int) -> KMeansResult:
        # Per-thread OpenMP setting: the parallelism is across groups, not inside one.
        faiss.omp_set_num_threads(1)
        return kmeans(vectors[groups[g]], ks[g], iters=iters, seed=seed + g, assign=assign, init=init)

    previous = faiss.omp_get_max_threads()
    try:
        if workers == 1:
            return [run(g) for g in range(len(groups))]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, range(len(groups))))
    finally:
        faiss.omp_set_num_threads(previous)


def class_groups(labels: np.ndarray) -> tuple[list[int], list[slice | np.ndarray]]:
    """Sorted class labels and, per class, its rows (a slice when the rows are contiguous)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes, first, counts = np.unique(labels, return_index=True, return_counts=True)
    if np.all(np.diff(labels) >= 0):  # sorted listing (class folders): contiguous rows
        return classes.tolist(), [slice(int(f), int(f + c)) for f, c in zip(first, counts)]
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return classes.tolist(), [order[bounds[i]:bounds[i + 1]] for i in range(len(classes))]
