"""k-means for codebook building: ours (faiss) against a plain torch Lloyd loop and
scikit-learn's MiniBatchKMeans, on the same data with the same number of iterations.

Case 1 (one large problem): 200,000 x 64-d vectors -> 10,000 centres.
Case 2 (per-class): 100 classes x 2,000 x 64-d vectors -> 100 centres per class.

The torch Lloyd loop is the best form of what the reference code does with kmeans_pytorch
(whose broadcast distances would need N x K x D memory): distances by matmul in chunks of
8,192 rows, argmin, centroid sums with `index_add_`, empty clusters left in place.
Every method starts from its own seeded random init; every inertia is measured afterwards
by one exact evaluator (fp32 matmul distances, float64 sums), outside the timed region.

Data: Gaussian mixtures (feature vectors are clustered, not uniform noise): case 1 has
2,000 components with centres N(0, 1) and per-component spread U(0.2, 0.6); each class
of case 2 has its own 20 components.

Also printed: the projected time of the paper's per-class codebook (1,000 classes x
20,500 vectors x 768-d -> 100 centres each, 20 iterations) on this machine, extrapolated
from timing our per-class k-means on a few classes of exactly that size.

    python benchmarks/kmeans.py [--json] [--iters 10] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from vqgan_lc._faiss import configure_openblas

# The kernel the package picks for faiss, chosen before numpy, sklearn or faiss load a BLAS, so
# every method compared runs on the same one (the package itself sets it only when faiss loads).
configure_openblas()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vqgan_lc.codebook.kmeans import grouped_kmeans, kmeans  # noqa: E402


def mixture(n: int, dim: int, components: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((components, dim)).astype(np.float32)
    spread = rng.uniform(0.2, 0.6, components).astype(np.float32)
    which = rng.integers(0, components, n)
    noise = rng.standard_normal((n, dim)).astype(np.float32)
    return centres[which] + noise * spread[which, None]


def torch_lloyd(x: np.ndarray, k: int, iters: int, seed: int = 0, chunk: int = 8192) -> torch.Tensor:
    data = torch.from_numpy(x)
    generator = torch.Generator().manual_seed(seed)
    centroids = data[torch.randperm(len(data), generator=generator)[:k]].clone()
    labels = torch.empty(len(data), dtype=torch.long)
    for _ in range(iters):
        sq_norms = (centroids * centroids).sum(1)
        for start in range(0, len(data), chunk):
            # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c; ||x||^2 does not change the argmin.
            labels[start:start + chunk] = torch.addmm(sq_norms, data[start:start + chunk], centroids.T, alpha=-2).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def sklearn_minibatch(x: np.ndarray, k: int, iters: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(n_clusters=k, init="random", n_init=1, max_iter=iters, batch_size=4096,
                            random_state=seed, max_no_improvement=None, tol=0.0, compute_labels=False)
    return model.fit(x).cluster_centers_.astype(np.float32)


def exact_inertia(x: np.ndarray, centroids, chunk: int = 8192) -> float:
    data = torch.from_numpy(x)
    c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
    sq_norms = (c * c).sum(1)
    total = 0.0
    for start in range(0, len(data), chunk):
        block = data[start:start + chunk]
        nearest = torch.addmm(sq_norms, block, c.T, alpha=-2).min(1).values + (block * block).sum(1)
        total += nearest.clamp_min(0).double().sum().item()
    return total


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def case_large(iters: int, n: int, k: int, with_sklearn: bool) -> dict:
    x = mixture(n, 64, 2000, np.random.default_rng(0))
    ours, t_ours = timed(lambda: kmeans(x, k, iters=iters, seed=0))
    lloyd, t_lloyd = timed(lambda: torch_lloyd(x, k, iters))
    out = {"n": n, "k": k, "iters": iters, "assign": ours.assign,
           "ours_s": t_ours, "ours_inertia": exact_inertia(x, ours.centroids),
           "torch_lloyd_s": t_lloyd, "torch_lloyd_inertia": exact_inertia(x, lloyd)}
    if with_sklearn:
        mb, t_mb = timed(lambda: sklearn_minibatch(x, k, iters))
        out.update(sklearn_minibatch_s=t_mb, sklearn_minibatch_inertia=exact_inertia(x, mb))
    return out


def case_per_class(iters: int, classes: int, per_class: int, k: int, with_sklearn: bool) -> dict:
    rng = np.random.default_rng(1)
    x = np.concatenate([mixture(per_class, 64, 20, rng) for _ in range(classes)])
    groups = [slice(c * per_class, (c + 1) * per_class) for c in range(classes)]
    ours, t_ours = timed(lambda: grouped_kmeans(x, groups, [k] * classes, iters=iters, seed=0))
    lloyd, t_lloyd = timed(lambda: [torch_lloyd(x[g], k, iters, seed=c) for c, g in enumerate(groups)])
    out = {"classes": classes, "per_class": per_class, "k": k, "iters": iters, "ours_s": t_ours,
           "ours_inertia": sum(exact_inertia(x[g], r.centroids) for g, r in zip(groups, ours)),
           "torch_lloyd_s": t_lloyd, "torch_lloyd_inertia": sum(exact_inertia(x[g], c) for g, c in zip(groups, lloyd))}
    if with_sklearn:
        mb, t_mb = timed(lambda: [sklearn_minibatch(x[g], k, iters, seed=c) for c, g in enumerate(groups)])
        out.update(sklearn_minibatch_s=t_mb,
                   sklearn_minibatch_inertia=sum(exact_inertia(x[g], c) for g, c in zip(groups, mb)))
    return out


def imagenet_projection(sample_classes: int, iters: int = 20) -> dict:
    """Time our per-class k-means on a few ImageNet-sized classes and scale to 1,000."""
    n, dim, k, total = 20_500, 768, 100, 1000
    rng = np.random.default_rng(2)
    x = np.concatenate([mixture(n, dim, 100, rng) for _ in range(sample_classes)])
    groups = [slice(c * n, (c + 1) * n) for c in range(sample_classes)]
    _, seconds = timed(lambda: grouped_kmeans(x, groups, [k] * sample_classes, iters=iters, seed=0))
    return {"sample_classes": sample_classes, "sample_s": seconds, "iters": iters,
            "projected_s": seconds * total / sample_classes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--iters", type=int, default=10, help="iterations for case 1 (case 2 uses 20)")
    parser.add_argument("--quick", action="store_true", help="smaller problems (a smoke run, not the targets)")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args()
    sk = not args.no_sklearn
    threads = torch.get_num_threads()
    print(f"threads: torch {threads}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}", flush=True)

    large = case_large(args.iters, 20_000 if args.quick else 200_000, 1000 if args.quick else 10_000, sk)
    print(f"case 1: {large['n']} x 64 -> {large['k']}, {large['iters']} iterations (ours: {large['assign']} assignment)")
    for name in ("ours", "torch_lloyd", "sklearn_minibatch"):
        if f"{name}_s" in large:
            print(f"  {name:18s} {large[f'{name}_s']:8.2f} s   inertia {large[f'{name}_inertia']:.6g}", flush=True)

    per_class = case_per_class(20, 20 if args.quick else 100, 2000, 100, sk)
    print(f"case 2: {per_class['classes']} classes x {per_class['per_class']} x 64 -> {per_class['k']} each, 20 iterations")
    for name in ("ours", "torch_lloyd", "sklearn_minibatch"):
        if f"{name}_s" in per_class:
            print(f"  {name:18s} {per_class[f'{name}_s']:8.2f} s   inertia {per_class[f'{name}_inertia']:.6g}", flush=True)

    projection = imagenet_projection(2 if args.quick else 4)
    print(f"projected: paper's per-class codebook (1000 classes x 20,500 x 768-d -> 100 each, 20 iterations) "
          f"~{projection['projected_s'] / 60:.1f} min on this machine "
          f"({projection['sample_classes']} classes took {projection['sample_s']:.1f} s)")

    summary = {
        "speedup_over_torch_lloyd": large["torch_lloyd_s"] / large["ours_s"],
        "inertia_ratio_ours_over_torch_lloyd": large["ours_inertia"] / large["torch_lloyd_inertia"],
        "per_class_speedup_over_torch_lloyd": per_class["torch_lloyd_s"] / per_class["ours_s"],
        "per_class_inertia_ratio_ours_over_torch_lloyd": per_class["ours_inertia"] / per_class["torch_lloyd_inertia"],
        "imagenet_per_class_projected_minutes": projection["projected_s"] / 60,
        "threads": threads, "case1": large, "case2": per_class, "projection": projection,
    }
    print(f"speedup over torch Lloyd: {summary['speedup_over_torch_lloyd']:.2f}x (inertia ratio "
          f"{summary['inertia_ratio_ours_over_torch_lloyd']:.4f}); per-class "
          f"{summary['per_class_speedup_over_torch_lloyd']:.2f}x")
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
