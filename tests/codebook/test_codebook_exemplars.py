"""Exemplars: each entry's nearest member vectors, recorded at build time in a sidecar file."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from vqgan_lc.backbones import register_backbone, wrap_module
from vqgan_lc.cli import main
from vqgan_lc.codebook import build_codebook, load_codebook, save_codebook
from vqgan_lc.codebook.exemplars import (
    Exemplars,
    exemplars_path,
    load_exemplars,
    nearest_vectors,
    save_exemplars,
)
from vqgan_lc.data import EvalTransform, load_image, to_tensor


def _conv(weights=None, pretrained=True):
    torch.manual_seed(0)
    return wrap_module(nn.Conv2d(3, 5, kernel_size=8, stride=8), input_size=32, name="test-exemplar-conv", dim=5)


register_backbone("test-exemplar-conv", _conv)


def _brute_force(vectors, centroids, k, groups):
    """Each vector to its nearest entry of its group; per entry the k nearest members (ties: lower row)."""
    expected = np.full((len(centroids), k), -1)
    for rows, entries in groups:
        rows = np.arange(len(vectors))[rows]
        book = centroids[entries]
        d = ((vectors[rows, None, :] - book[None]) ** 2).sum(-1)
        owner = d.argmin(1)
        for local in range(len(book)):
            members = np.where(owner == local)[0]
            order = members[np.lexsort((rows[members], d[members, local]))][:k]
            expected[entries.start + local, :len(order)] = rows[order]
    return expected


@pytest.mark.parametrize("per_class", [False, True])
def test_nearest_vectors_match_brute_force_across_chunks(per_class):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(700, 6)).astype(np.float16)
    centroids = rng.normal(size=(40, 6)).astype(np.float32)
    labels = np.repeat([0, 1], 350)
    groups = ([(slice(0, 350), slice(0, 20)), (slice(350, 700), slice(20, 40))] if per_class
              else [(slice(0, 700), slice(0, 40))])
    rows, dist = nearest_vectors(vectors, torch.from_numpy(centroids), 4, groups=groups, chunk=97)
    expected = _brute_force(vectors.astype(np.float32), centroids, 4, groups)
    np.testing.assert_array_equal(rows, expected)
    assert (np.diff(np.where(rows >= 0, dist, 1e30), axis=1) >= 0).all()  # nearest first
    if per_class:  # a class's entries only ever hold that class's vectors
        filled = rows >= 0
        assert (labels[rows[:20][filled[:20]]] == 0).all() and (labels[rows[20:][filled[20:]]] == 1).all()


@pytest.fixture
def image_folder(tmp_path, write_images):
    write_images(tmp_path / "data", ("a", "b"), per_class=4, size=(40, 48))  # not square: resized and cropped
    return tmp_path


def test_build_records_exemplars_that_point_at_the_right_patches(image_folder, capsys):
    out = image_folder / "cb.safetensors"
    assert main(["codebook", "build", str(image_folder / "data"), "--size", "6", "--backbone", "test-exemplar-conv",
                 "--pool", "2", "--workers", "0", "--no-progress", "--cache-dir", str(image_folder / "cache"),
                 "--exemplars", "3", "--out", str(out)]) == 0
    book = load_codebook(out)
    ex = load_exemplars(exemplars_path(out), book.vectors)
    assert exemplars_path(out).name == "cb.exemplars.npz"
    assert ex.image.shape == (6, 3) and ex.grid == (2, 2) and ex.input_size == 32
    assert ex.image.dtype == np.int32 and ex.cell.dtype == np.int16
    backbone = _conv()
    for entry in range(6):
        entry_class = 0 if entry < 3 else 1  # per-class: 3 entries for "a", then 3 for "b"
        for found in ex.of_entry(entry):
            assert os.path.isabs(found["source"]) and f"{os.sep}{'ab'[entry_class]}{os.sep}" in found["source"]
            assert found["label"] == entry_class
            # the recorded distance is the distance of that image's cell feature to the entry
            image = EvalTransform(32)(load_image(found["source"]))
            with torch.no_grad():
                grid = nn.functional.adaptive_avg_pool2d(backbone(image[None]), 2)[0].flatten(1).T
            vector = grid[found["cell"]].half().float()
            assert abs(float(((vector - book.vectors[entry]) ** 2).sum()) - found["distance"]) < 1e-3
            # and the patch is that cell of the picture the backbone saw
            patch = ex.patch(found["image"], found["cell"])
            row, col = divmod(found["cell"], 2)
            assert torch.equal(to_tensor(patch), image[:, 16 * row:16 * row + 16, 16 * col:16 * col + 16])
    assert main(["codebook", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"exemplars: {exemplars_path(out)} (3 per entry, 18 in all" in info


def test_a_codebook_without_or_with_a_stale_sidecar_still_loads(image_folder, capsys):
    out = image_folder / "cb.safetensors"
    common = ["codebook", "build", str(image_folder / "data"), "--backbone", "test-exemplar-conv", "--pool", "2",
              "--workers", "0", "--no-progress", "--cache-dir", str(image_folder / "cache"), "--out", str(out)]
    assert main([*common, "--size", "4", "--exemplars", "0"]) == 0
    assert not exemplars_path(out).exists()
    assert main(["codebook", "info", str(out)]) == 0
    assert "exemplars: none recorded" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no exemplar file"):
        load_exemplars(exemplars_path(out))
    assert main([*common, "--size", "4", "--exemplars", "2"]) == 0
    assert main([*common, "--size", "6", "--exemplars", "0"]) == 0  # rebuilt: the old sidecar stays, now stale
    book = load_codebook(out)
    assert book.size == 6
    with pytest.raises(ValueError, match="another codebook"):
        load_exemplars(exemplars_path(out), book.vectors)
    capsys.readouterr()
    assert main(["codebook", "info", str(out)]) == 0
    assert "exemplars: unusable" in capsys.readouterr().out


def test_in_memory_builds_keep_their_pictures(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    book = build_codebook(images, 5, backbone=_conv(), pool=2, mode="global", iters=2, exemplars=2)
    assert book.exemplars is not None and book.exemplars.pictures is not None
    path = tmp_path / "cb.safetensors"
    save_codebook(path, book.vectors, book.metadata, exemplars=book.exemplars)
    ex = load_exemplars(exemplars_path(path), load_codebook(path).vectors)
    first = ex.of_entry(0)[0]
    assert first["source"].startswith("in-memory image")
    patch = ex.patch(first["image"], first["cell"])
    assert patch.size == (16, 16)  # one cell of a 2x2 grid over the 32 px picture (JPEG: pixels approximate)
    assert len(ex.pictures) == len(ex.image_label) <= 6


def test_the_sidecar_of_100k_entries_stays_small(tmp_path):
    rng = np.random.default_rng(0)
    n, k, images = 100_000, 8, 50_000
    ex = Exemplars(image=rng.integers(0, images, (n, k)).astype(np.int32),
                   cell=rng.integers(0, 16, (n, k)).astype(np.int16),
                   distance=np.sort(rng.random((n, k)).astype(np.float32), axis=1),
                   image_label=np.repeat(np.arange(1000), 50).astype(np.int32), grid=(4, 4), input_size=224,
                   paths=[f"/data/imagenet/train/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(1000) for i in range(50)],
                   meta={"k": k})
    path = tmp_path / "x.exemplars.npz"
    save_exemplars(path, ex)
    size_mb = path.stat().st_size / 2**20
    assert size_mb < 12, size_mb  # random (incompressible) ids: ~7.6 MB of arrays, plus the path table
    back = load_exemplars(path)
    np.testing.assert_array_equal(back.image, ex.image)
    assert back.paths[123] == ex.paths[123] and back.grid == (4, 4)
