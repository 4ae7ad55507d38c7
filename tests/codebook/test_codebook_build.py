import numpy as np
import pytest
import torch
from torch import nn

from vqgan_lc.codebook import build_codebook, build_codebook_from_vectors
from vqgan_lc.codebook.build import split_evenly
from vqgan_lc.codebook.kmeans import class_groups


def labelled_data(classes=3, per_class=120, dim=6, seed=0):
    """Class c lives around 100 * c on every axis, so each entry's class is readable from it."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([100.0 * c + rng.standard_normal((per_class, dim)) for c in range(classes)]).astype(np.float32)
    return x, np.repeat(np.arange(classes), per_class)


def test_per_class_layout_follows_label_order():
    x, labels = labelled_data()
    centroids, info = build_codebook_from_vectors(x, labels, 30, "per-class", seed=0, iters=5)
    assert centroids.shape == (30, 6) and info["entries_per_class"] == [10, 10, 10]
    assert info["classes"] == [0, 1, 2] and info["mode"] == "per-class" and info["inertia"] > 0
    owner = (centroids.mean(1) / 100).round().long()
    assert owner.tolist() == [0] * 10 + [1] * 10 + [2] * 10


def test_per_class_with_shuffled_rows_and_uneven_split():
    x, labels = labelled_data()
    order = np.random.default_rng(1).permutation(len(x))
    centroids, info = build_codebook_from_vectors(x[order], labels[order], 31, "per-class", iters=5)
    assert info["entries_per_class"] == [11, 10, 10]
    owner = (centroids.mean(1) / 100).round().long()
    assert owner.tolist() == [0] * 11 + [1] * 10 + [2] * 10


def test_class_groups_and_even_split():
    classes, groups = class_groups(np.array([0, 0, 1, 1, 1, 3]))
    assert classes == [0, 1, 3] and groups == [slice(0, 2), slice(2, 5), slice(5, 6)]
    classes, groups = class_groups(np.array([1, 0, 1]))
    assert [g.tolist() for g in groups] == [[1], [0, 2]]
    assert split_evenly(10, 3) == [4, 3, 3]


def test_global_random_select_and_gaussian_modes():
    x, _ = labelled_data()
    centroids, info = build_codebook_from_vectors(x, None, 9, "global", seed=3, iters=5)
    assert centroids.shape == (9, 6) and info["k"] == 9 and "cluster_size_histogram" in info
    picked, _ = build_codebook_from_vectors(x, None, 50, "random-select", seed=0)
    rows = {tuple(r) for r in x.tolist()}
    assert len({tuple(r) for r in picked.tolist()} & rows) == 50  # 50 distinct real vectors
    noise, _ = build_codebook_from_vectors(x, None, 4000, "gaussian", seed=0)
    assert torch.allclose(noise.mean(0), torch.from_numpy(x.mean(0)), atol=3.0)
    assert torch.allclose(noise.std(0), torch.from_numpy(x.std(0)), rtol=0.1)


def test_mode_and_size_errors():
    x, labels = labelled_data()
    with pytest.raises(ValueError, match="exceeds the 360 feature vectors"):
        build_codebook_from_vectors(x, labels, 361, "global")
    with pytest.raises(ValueError, match="per-class mode needs class labels"):
        build_codebook_from_vectors(x, None, 30, "per-class")
    with pytest.raises(ValueError, match="cannot cover 3 classes"):
        build_codebook_from_vectors(x, labels, 2, "per-class")
    with pytest.raises(ValueError, match="unknown codebook mode"):
        build_codebook_from_vectors(x, labels, 2, "per_class")


def test_build_codebook_from_image_batches_with_a_custom_module():
    torch.manual_seed(0)
    patchify = nn.Conv2d(3, 4, kernel_size=8, stride=8)  # 32 px -> 4x4 grid of 4-d features
    images = torch.rand(10, 3, 32, 32) * 2 - 1
    codebook = build_codebook(images.split(4), 12, backbone=patchify, pool=2, mode="global", iters=5)
    assert codebook.vectors.shape == (12, 4)
    meta = codebook.metadata
    assert (meta["num_images"], meta["num_vectors"], meta["pooling"], meta["k"]) == (10, 40, "avg2x2", 12)
    whole = build_codebook([(images, torch.arange(10) % 2)], 4, backbone=patchify, pool=None, mode="per-class", iters=5)
    assert whole.metadata["num_vectors"] == 160 and whole.metadata["entries_per_class"] == [2, 2]


def test_few_vectors_per_entry_warn_and_are_recorded(caplog):
    x, labels = labelled_data(per_class=20)  # 60 vectors
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.build"):
        _, info = build_codebook_from_vectors(x, labels, 12, "per-class", iters=2)
    assert info["vectors_per_entry"] == 5.0
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "only 5.0 feature vectors per entry (60 vectors for 12 entries" in message
    assert "more images" in message and "--pool" in message and "\n" not in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.build"):
        _, info = build_codebook_from_vectors(x, None, 7, "global", iters=2)
        assert info["vectors_per_entry"] == pytest.approx(8.57)
        assert len(caplog.records) == 1
        caplog.clear()
        _, info = build_codebook_from_vectors(x, None, 6, "global", iters=2)  # 10 per entry: enough
        assert info["vectors_per_entry"] == 10.0
        build_codebook_from_vectors(x, None, 30, "random-select")  # no averaging: no warning
        build_codebook_from_vectors(x, None, 300, "gaussian")
    assert caplog.records == []
