import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqgan_lc.backbones import wrap_module
from vqgan_lc.codebook import ExtractConfig, FeatureStore, ShardedRows, extract_features, pool_features
from vqgan_lc.data import list_images


def tiny_backbone():
    torch.manual_seed(0)
    return wrap_module(nn.Conv2d(3, 4, kernel_size=8, stride=8), input_size=32, name="tiny")  # 4x4 grid


def make_dataset(root, per_class=4, corrupt=True):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if corrupt:
        (root / "b" / "1x.png").write_bytes(b"\x89PNG broken")
    return list_images(root)


CONFIG = dict(pool=2, batch_size=2, num_workers=0, progress=False, shard_mb=1e-4)  # ~13 vectors per shard


def test_pool_features_shapes():
    fmap = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    pooled = pool_features(fmap, 4)
    assert pooled.shape == (2, 16, 3)
    assert torch.allclose(pooled[0, 0], fmap[0, :, :4, :4].mean((1, 2)))  # top-left 4x4 block first
    assert pool_features(fmap, None).shape == (2, 256, 3)
    assert pool_features(torch.zeros(1, 3, 7, 7), 4).shape == (1, 16, 3)  # adaptive bins
    with pytest.raises(ValueError, match="does not fit"):
        pool_features(torch.zeros(1, 3, 2, 2), 4)


def test_extraction_writes_shards_manifest_and_skips_corrupt_images(tmp_path):
    records = make_dataset(tmp_path / "data")
    store = extract_features(records, tiny_backbone(), str(tmp_path / "f"), ExtractConfig(**CONFIG))
    assert store.num_images == 8 and store.manifest["num_skipped"] == 1 and store.manifest["num_listed"] == 9
    assert len(store.manifest["shards"]) > 1
    assert store.vectors.shape == (8 * 4, 4)
    assert store.manifest["class_names"] == ["a", "b"] and store.manifest["labels"] == [0] * 4 + [1] * 4
    assert store.vector_labels().tolist() == [0] * 16 + [1] * 16
    skipped = (tmp_path / "f" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(str(tmp_path / "data" / "b" / "1x.png"))
    # Vectors equal the pooled backbone output of the same preprocessed image.
    from vqgan_lc.data import EvalTransform, load_image

    image = EvalTransform(32)(load_image(records[5].path))
    with torch.no_grad():
        expected = pool_features(tiny_backbone()(image[None]), 2)[0].numpy()
    row = store.manifest["image_ids"].index(5) * 4
    assert np.allclose(store.vectors[row:row + 4].astype(np.float32), expected, atol=2e-3)


class CrashAfter(nn.Module):
    """Wraps a backbone and raises on call number `calls` (an interrupted run)."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.left = inner, calls
        self.name, self.dim, self.input_size, self.layer = inner.name, inner.dim, inner.input_size, inner.layer
        self.describe = inner.describe

    def forward(self, x):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner(x)


def test_resume_after_an_interruption_gives_the_same_features(tmp_path):
    records = make_dataset(tmp_path / "data")
    whole = extract_features(records, tiny_backbone(), str(tmp_path / "whole"), ExtractConfig(**CONFIG))
    with pytest.raises(KeyboardInterrupt):
        extract_features(records, CrashAfter(tiny_backbone(), 3), str(tmp_path / "resumed"), ExtractConfig(**CONFIG))
    progress = json.loads((tmp_path / "resumed" / "rank0.json").read_text())
    assert not progress["done"] and 0 < progress["next"] < len(records)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        FeatureStore.open(str(tmp_path / "resumed"))
    resumed = extract_features(records, tiny_backbone(), str(tmp_path / "resumed"), ExtractConfig(**CONFIG))
    assert resumed.manifest["image_ids"] == whole.manifest["image_ids"]
    assert np.array_equal(resumed.vectors[0:len(resumed.vectors)], whole.vectors[0:len(whole.vectors)])
    assert resumed.manifest["num_skipped"] == 1


def test_a_folder_of_other_features_is_not_reused(tmp_path):
    records = make_dataset(tmp_path / "data", corrupt=False)
    extract_features(records, tiny_backbone(), str(tmp_path / "f"), ExtractConfig(**CONFIG))
    with pytest.raises(ValueError, match="another dataset, backbone or pooling"):
        extract_features(records, tiny_backbone(), str(tmp_path / "f"), ExtractConfig(**{**CONFIG, "pool": 1}))


def test_sharded_rows_slices_and_indices_across_shards(tmp_path):
    parts = [np.arange(i * 10, i * 10 + n * 2, dtype=np.float16).reshape(n, 2) for i, n in enumerate([3, 1, 4])]
    files = []
    for i, part in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", part)
        files.append(str(tmp_path / f"{i}.npy"))
    rows, whole = ShardedRows(files), np.concatenate(parts)
    assert rows.shape == (8, 2) and len(rows) == 8
    assert np.array_equal(rows[2:6], whole[2:6]) and np.array_equal(rows[::3], whole[::3])
    picked = np.array([7, 0, 3, 3, 5])
    assert np.array_equal(rows[picked], whole[picked])
    with pytest.raises(IndexError):
        rows[np.array([8])]


def _distributed_worker(rank, world, init_file, records, folder, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        store = extract_features(records, tiny_backbone(), folder, ExtractConfig(**CONFIG))
        if rank == 0:
            np.save(out, store.vectors[0:len(store.vectors)])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~20 s on 2 cores
def test_two_processes_extract_disjoint_slices_into_one_manifest(tmp_path):
    import torch.multiprocessing as mp

    records = make_dataset(tmp_path / "data")
    single = extract_features(records, tiny_backbone(), str(tmp_path / "single"), ExtractConfig(**CONFIG))
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), records, str(tmp_path / "multi"),
                                        str(tmp_path / "out.npy")), nprocs=2)
    multi = FeatureStore.open(str(tmp_path / "multi"))
    assert {s["file"][:8] for s in multi.manifest["shards"]} == {"shard-r0", "shard-r1"}
    assert multi.manifest["image_ids"] == single.manifest["image_ids"] and multi.manifest["num_skipped"] == 1
    assert np.array_equal(np.load(tmp_path / "out.npy"), single.vectors[0:len(single.vectors)])


def test_the_cache_key_follows_the_files_content_and_absolute_paths(tmp_path, monkeypatch):
    import shutil

    from vqgan_lc.codebook.feature_store import dataset_fingerprint, features_key

    records = make_dataset(tmp_path / "here" / "data", corrupt=False)
    origin = tiny_backbone().describe()
    key = features_key(dataset_fingerprint(records), origin, 2)
    assert features_key(dataset_fingerprint(list_images(tmp_path / "here" / "data")), origin, 2) == key
    monkeypatch.chdir(tmp_path / "here")
    assert features_key(dataset_fingerprint(list_images("data")), origin, 2) == key  # relative = absolute
    # The same relative folder name in another directory, byte for byte and time for time the
    # same files (copy2 keeps mtimes), is another dataset.
    shutil.copytree(tmp_path / "here" / "data", tmp_path / "there" / "data", copy_function=shutil.copy2)
    monkeypatch.chdir(tmp_path / "there")
    assert features_key(dataset_fingerprint(list_images("data")), origin, 2) != key


def test_an_image_changed_in_place_gets_new_features(tmp_path, caplog):
    from vqgan_lc.codebook.feature_store import dataset_fingerprint, features_key

    records = make_dataset(tmp_path / "data", corrupt=False)
    origin = tiny_backbone().describe()
    old_key = features_key(dataset_fingerprint(records), origin, 2)
    old = extract_features(records, tiny_backbone(), str(tmp_path / "cache" / old_key), ExtractConfig(**CONFIG))
    with caplog.at_level("INFO", logger="vqgan_lc.data.cache"):  # unchanged files: reused, no backbone call
        again = extract_features(records, CrashAfter(tiny_backbone(), 0), str(tmp_path / "cache" / old_key),
                                 ExtractConfig(**CONFIG))
    assert again.num_images == 8 and any("reusing" in r.getMessage() for r in caplog.records)
    # Rewrite image 2 with other pixels (same size on disk) and a later mtime.
    path = records[2].path
    stat = os.stat(path)
    pixels = np.random.default_rng(1).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new_key = features_key(dataset_fingerprint(list_images(tmp_path / "data")), origin, 2)
    assert new_key != old_key
    with pytest.raises(ValueError, match="another dataset, backbone or pooling"):  # the stale folder is refused
        extract_features(records, tiny_backbone(), str(tmp_path / "cache" / old_key), ExtractConfig(**CONFIG))
    new = extract_features(records, tiny_backbone(), str(tmp_path / "cache" / new_key), ExtractConfig(**CONFIG))
    changed = slice(2 * 4, 3 * 4)  # image 2's vectors
    assert not np.array_equal(new.vectors[changed], old.vectors[changed])
    assert np.array_equal(new.vectors[0:8], old.vectors[0:8]) and np.array_equal(new.vectors[12:], old.vectors[12:])
