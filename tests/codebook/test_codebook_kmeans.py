import numpy as np
import pytest
import torch

from vqgan_lc.codebook.kmeans import grouped_kmeans, kmeans, size_histogram
from vqgan_lc.codebook.two_level import proportional_sizes, two_level_kmeans


def blobs(centres: np.ndarray, per_blob: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = centres[:, None, :] + spread * rng.standard_normal((len(centres), per_blob, centres.shape[1]))
    return points.reshape(-1, centres.shape[1]).astype(np.float32)


def test_recovers_the_centres_of_well_separated_blobs():
    rng = np.random.default_rng(3)
    centres = (rng.standard_normal((8, 16)) * 20).astype(np.float32)
    x = blobs(centres, 200, 0.5)
    result = kmeans(x, 8, iters=20, seed=0, init="k-means++")
    found = result.centroids.numpy()
    # Every true centre has one found centre within 0.2 (the mean of 200 points of spread 0.5).
    dist = np.linalg.norm(centres[:, None] - found[None], axis=2)
    assert dist.min(1).max() < 0.2
    assert sorted(dist.argmin(1).tolist()) == list(range(8))
    assert result.cluster_sizes.tolist() == [200] * 8
    expected = sum(((x[i * 200:(i + 1) * 200] - found[dist[i].argmin()]) ** 2).sum() for i in range(8))
    assert result.inertia == pytest.approx(float(expected), rel=1e-4)


def test_same_seed_same_result_and_tensor_input_accepted():
    x = blobs(np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32) * 3, 50, 1.0)
    a = kmeans(x, 20, iters=10, seed=7)
    b = kmeans(torch.from_numpy(x).half(), 20, iters=10, seed=7)  # fp16 tensors are upcast
    c = kmeans(x, 20, iters=10, seed=8)
    assert torch.equal(a.centroids, kmeans(x, 20, iters=10, seed=7).centroids)
    assert a.centroids.dtype == torch.float32 and a.centroids.shape == (20, 8)
    assert b.centroids.shape == (20, 8)
    assert not torch.equal(a.centroids, c.centroids)
    assert int(a.cluster_sizes.sum()) == len(x)


def test_more_centroids_than_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot make 11 centroids from 10 vectors"):
        kmeans(np.zeros((10, 4), np.float32), 11)
    with pytest.raises(ValueError, match="NaN or infinite"):
        kmeans(np.full((10, 4), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="unknown assign mode"):
        kmeans(np.zeros((10, 4), np.float32), 2, assign="hnsw")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_empty_clusters_are_reseeded(seed):
    # Every vector appears 10 times: a random init of 50 centroids picks copies of the same
    # vector, and all but one of those identical centroids come out empty.
    distinct = blobs(np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32) * 5, 50, 1.0)
    x = np.repeat(distinct, 10, axis=0)
    result = kmeans(x, 50, iters=10, seed=seed)
    assert result.reseeded > 0
    assert result.empty == 0 and int(result.cluster_sizes.min()) >= 10
    assert result.iterations == 10


def test_duplicates_only_data_reports_the_clusters_it_cannot_fill():
    x = np.repeat(np.eye(4, dtype=np.float32), 20, axis=0)  # 4 distinct vectors
    result = kmeans(x, 6, iters=5, seed=0)
    assert result.empty >= 2 and int(result.cluster_sizes.sum()) == 80


def test_ivf_assignment_stays_close_to_exact():
    rng = np.random.default_rng(1)
    x = blobs(rng.standard_normal((100, 16)).astype(np.float32) * 2, 60, 0.5)
    exact = kmeans(x, 512, iters=8, seed=0, assign="exact")
    ivf = kmeans(x, 512, iters=8, seed=0, assign="ivf")
    assert ivf.assign == "ivf" and exact.assign == "exact"
    assert ivf.inertia / exact.inertia < 1.02
    assert int(ivf.cluster_sizes.sum()) == len(x)


def test_grouped_results_do_not_depend_on_the_number_of_workers():
    x = np.random.default_rng(2).standard_normal((600, 8)).astype(np.float32)
    groups = [slice(0, 200), np.arange(200, 450), slice(450, 600)]
    one = grouped_kmeans(x, groups, [5, 7, 3], iters=5, seed=1, workers=1)
    two = grouped_kmeans(x, groups, [5, 7, 3], iters=5, seed=1, workers=2)
    assert [r.centroids.shape[0] for r in one] == [5, 7, 3]
    for a, b in zip(one, two):
        assert torch.equal(a.centroids, b.centroids)
    # Centroids of a group lie inside that group's data (mean of its own rows).
    assert one[1].centroids.mean(0).sub(torch.from_numpy(x[200:450].mean(0))).abs().max() < 0.5
    with pytest.raises(ValueError, match="group 2: cannot make 151 centroids from 150 vectors"):
        grouped_kmeans(x, groups, [5, 7, 151])


def test_proportional_sizes_sum_to_k_and_never_exceed_counts():
    counts = np.array([1, 0, 50, 7, 942])
    sizes = proportional_sizes(counts, 100)
    assert sizes.sum() == 100 and (sizes <= counts).all() and sizes[1] == 0
    assert sizes[4] == pytest.approx(94.2, abs=1)


def test_two_level_scheme_at_small_scale():
    rng = np.random.default_rng(4)
    x = blobs(rng.standard_normal((40, 8)).astype(np.float32) * 4, 100, 0.5)
    result = two_level_kmeans(x, 200, cells=6, iters=8, seed=0, workers=1)
    assert result.centroids.shape == (200, 8)
    assert result.assign == "two-level" and sum(result.extra["cell_sizes"]) == 200
    assert int(result.cluster_sizes.sum()) == len(x)
    flat = kmeans(x, 200, iters=8, seed=0, assign="exact")
    # Within-cell inertia bounds the true one from above; it stays near the flat k-means.
    true_inertia = float(((x[:, None] - result.centroids.numpy()[None]) ** 2).sum(2).min(1).sum())
    assert true_inertia <= result.inertia * (1 + 1e-4)
    assert result.inertia < 1.3 * flat.inertia


def test_size_histogram_bins():
    assert size_histogram(np.array([0, 1, 2, 3, 4, 9])) == [(0, 0, 1), (1, 1, 1), (2, 3, 2), (4, 7, 1), (8, 15, 1)]
