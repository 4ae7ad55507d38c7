import json
import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from vqgan_lc import distributed
from vqgan_lc.data import (
    CacheDataset,
    CacheStore,
    ImageDataset,
    encode_in_memory,
    list_images,
    write_cache,
)

HEADER = {"encoder": "avg8", "size": 32}
# 256 bytes per item (64 of tokens, 192 of latents): a shard closes after 3 items
SETTINGS = dict(batch_size=2, num_workers=0, progress=False, shard_mb=700 / 2**20)
CORRUPT = 6  # index of b/1x.png in the sorted listing


def encode(images):
    """A stand-in tokenizer: (B, 4, 4) int32 token ids and (B, 3, 4, 4) float32 latents from 32 px images."""
    grid = F.avg_pool2d(images, 8)
    tokens = ((grid.mean(1) + 1) * 50).round().to(torch.int32)
    return {"tokens": tokens.numpy(), "latents": grid.numpy()}


def image_dataset(root, per_class=4, corrupt=("b/1x.png",)):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    for relative in corrupt:
        (root / relative).write_bytes(b"\x89PNG broken")
    return ImageDataset(list_images(root), size=32, train=False)


def expected_arrays(dataset, indices):
    return encode(torch.stack([dataset[i]["image"] for i in indices]))


def readable(dataset):
    return [i for i in range(len(dataset)) if i != CORRUPT]


def assert_same_cache(a: CacheStore, b: CacheStore):
    for field in ("header", "arrays", "image_ids", "labels", "class_names", "num_listed", "num_skipped"):
        assert a.manifest[field] == b.manifest[field], field
    for key in a.keys:
        assert np.array_equal(np.asarray(a.rows(key)), np.asarray(b.rows(key))), key
    skipped = [open(os.path.join(store.folder, "skipped.txt"), encoding="utf-8").read() for store in (a, b)]
    assert skipped[0] == skipped[1] and len(skipped[0].splitlines()) == a.manifest["num_skipped"]


def test_round_trip_of_token_ids_and_latents_with_labels(tmp_path):
    dataset = image_dataset(tmp_path / "data")
    store = write_cache(dataset, encode, str(tmp_path / "cache"), header=HEADER, **SETTINGS)
    kept = readable(dataset)
    expected = expected_arrays(dataset, kept)
    assert store.num_items == 8 and store.image_ids.tolist() == kept
    assert store.labels.tolist() == [0] * 4 + [1] * 4 and store.class_names == ["a", "b"]
    assert store.header == HEADER and store.manifest["num_listed"] == 9 and store.manifest["num_skipped"] == 1
    assert store.manifest["arrays"] == {"tokens": {"dtype": "int32", "shape": [4, 4]},
                                        "latents": {"dtype": "float32", "shape": [3, 4, 4]}}
    assert len(store.manifest["shards"]) == 3  # 3 + 3 + 2 items
    tokens = store.rows("tokens")
    assert tokens.shape == (8, 4, 4) and tokens.dtype == np.int32
    assert np.array_equal(tokens[0:8], expected["tokens"])
    assert np.array_equal(tokens[np.array([7, 0, 3, 3])], expected["tokens"][[7, 0, 3, 3]])
    assert np.array_equal(tokens[-1], expected["tokens"][-1]) and np.array_equal(tokens[::3], expected["tokens"][::3])
    latents = store.rows("latents")
    assert latents.shape == (8, 3, 4, 4) and np.array_equal(np.asarray(latents), expected["latents"])
    flat = store.rows("latents", flatten=True)  # one row per (item, channel)
    assert flat.shape == (24, 4, 4) and np.array_equal(flat[3:6], expected["latents"][1])
    reopened = CacheStore.open(str(tmp_path / "cache"))
    assert np.array_equal(np.asarray(reopened.rows("tokens")), expected["tokens"])
    with pytest.raises(ValueError, match="holds no array 'ids'"):
        store.rows("ids")
    with pytest.raises(IndexError):
        tokens[8]


def test_a_finished_cache_is_reused_and_another_jobs_folder_refused(tmp_path, caplog):
    dataset = image_dataset(tmp_path / "data")
    folder = str(tmp_path / "cache")
    write_cache(dataset, encode, folder, header=HEADER, **SETTINGS)

    def never(images):
        raise AssertionError("a finished cache must not run the encoder again")

    with caplog.at_level("INFO", logger="vqgan_lc.data.cache"):
        again = write_cache(dataset, never, folder, header=dict(HEADER), **SETTINGS)
    assert again.num_items == 8 and any("reusing" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"another job \(encoder differ\); use an empty folder"):
        write_cache(dataset, encode, folder, header={**HEADER, "encoder": "other"}, **SETTINGS)


class Interrupt(Exception):
    pass


def crashing(calls):
    """`encode` that raises on call number calls + 1: a run killed mid-way."""
    left = [calls]

    def run(images):
        left[0] -= 1
        if left[0] < 0:
            raise Interrupt
        return encode(images)

    return run


# Batches of 2: [0 1] [2 3] | [4 5] [6x 7] | [8] (| = a shard closes). Crash on call 4: the
# shard holding 4 and 5 is cut short and redone. Crash on call 5: the skip of 6 is already
# committed and must not be listed twice.
@pytest.mark.parametrize("calls", [3, 4])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, calls):
    dataset = image_dataset(tmp_path / "data")
    whole = write_cache(dataset, encode, str(tmp_path / "whole"), header=HEADER, **SETTINGS)
    folder = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        write_cache(dataset, crashing(calls), str(folder), header=HEADER, **SETTINGS)
    record = json.loads((folder / "rank0.json").read_text())
    assert not record["done"] and record["next"] == (4 if calls == 3 else 8)
    assert not (folder / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        CacheStore.open(str(folder))
    write_cache(dataset, encode, str(folder), header=HEADER, **SETTINGS)
    assert_same_cache(CacheStore.open(str(folder)), CacheStore.open(str(tmp_path / "whole")))
    assert whole.manifest["num_skipped"] == 1


def test_max_items_stops_early_and_the_next_calls_finish_the_same_cache(tmp_path):
    dataset = image_dataset(tmp_path / "data")
    write_cache(dataset, encode, str(tmp_path / "whole"), header=HEADER, **SETTINGS)
    folder = tmp_path / "steps"
    calls = 1
    while write_cache(dataset, encode, str(folder), header=HEADER, max_items=3, **SETTINGS) is None:
        calls += 1
        assert json.loads((folder / "rank0.json").read_text())["next"] == 3 * (calls - 1)
    assert calls == 3
    assert_same_cache(CacheStore.open(str(folder)), CacheStore.open(str(tmp_path / "whole")))


def test_unreadable_images_are_skipped_counted_and_listed_once(tmp_path):
    dataset = image_dataset(tmp_path / "data", corrupt=("a/0x.png", "b/1x.png"))
    # one decoding worker: the skip reports come back from another process with the batch
    store = write_cache(dataset, encode, str(tmp_path / "cache"), header=HEADER, **{**SETTINGS, "num_workers": 1})
    paths = [r.path for r in dataset.records]
    bad = [paths.index(str(tmp_path / "data" / "a" / "0x.png")), paths.index(str(tmp_path / "data" / "b" / "1x.png"))]
    assert store.manifest["num_listed"] == 10 and store.manifest["num_skipped"] == 2
    assert store.image_ids.tolist() == [i for i in range(10) if i not in bad]
    lines = (tmp_path / "cache" / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [paths[i] for i in bad]
    assert all("cannot decode" in line.split("\t")[1] for line in lines)
    good = [i for i in range(10) if i not in bad]
    assert np.array_equal(np.asarray(store.rows("tokens")), expected_arrays(dataset, good)["tokens"])


def test_cache_dataset_view_for_training(tmp_path):
    dataset = image_dataset(tmp_path / "data")
    store = write_cache(dataset, encode, str(tmp_path / "cache"), header=HEADER, **SETTINGS)
    view = CacheDataset(store, "tokens")
    expected = expected_arrays(dataset, readable(dataset))["tokens"]
    assert len(view) == 8 and view.class_names == ["a", "b"]
    item = view[5]
    assert item["x"].dtype == torch.int32 and item["x"].shape == (4, 4) and item["label"] == 1
    assert torch.equal(item["x"], torch.from_numpy(expected[5]))
    batch = next(iter(DataLoader(view, batch_size=4)))
    assert batch["x"].shape == (4, 4, 4) and batch["label"].tolist() == [0] * 4
    # Pickled for DataLoader workers by file name, not by value.
    payload = pickle.dumps(view)
    assert str(tmp_path / "cache") in payload.decode("latin-1")
    assert torch.equal(pickle.loads(payload)[7]["x"], torch.from_numpy(expected[7]))
    latents = CacheDataset(store, "latents")[0]["x"]
    assert latents.dtype == torch.float32 and latents.shape == (3, 4, 4)
    with pytest.raises(IndexError):
        view[8]


def test_the_in_memory_mode_runs_the_same_loop(tmp_path):
    dataset = image_dataset(tmp_path / "data")
    store = write_cache(dataset, encode, str(tmp_path / "cache"), header=HEADER, **SETTINGS)
    from_dataset = encode_in_memory(dataset, encode, batch_size=2)
    assert from_dataset.image_ids.tolist() == store.image_ids.tolist()
    assert from_dataset.labels.tolist() == store.manifest["labels"]
    assert [item[0] for item in from_dataset.skipped] == [CORRUPT]
    for key in store.keys:
        assert np.array_equal(from_dataset.arrays[key], np.asarray(store.rows(key)))
    images = torch.stack([dataset[i]["image"] for i in readable(dataset)])
    labels = torch.tensor(store.manifest["labels"])
    from_tensor = encode_in_memory(images, encode, batch_size=3)
    from_pairs = encode_in_memory([(images[:5], labels[:5]), (images[5:], labels[5:])], encode)
    assert from_tensor.labels.tolist() == [-1] * 8 and from_pairs.labels.tolist() == labels.tolist()
    assert np.array_equal(from_tensor.arrays["tokens"], from_dataset.arrays["tokens"])
    assert np.array_equal(from_pairs.arrays["latents"], from_dataset.arrays["latents"])


def test_bad_sources_and_encoders_fail_with_one_line(tmp_path):
    images = torch.zeros(4, 3, 32, 32)
    with pytest.raises(ValueError, match="yielded no images"):
        encode_in_memory([], encode)
    with pytest.raises(ValueError, match=r"expected image batches \(B, 3, H, W\)"):
        encode_in_memory([torch.zeros(2, 1, 8, 8)], encode)
    with pytest.raises(ValueError, match="leading batch dimension"):
        encode_in_memory(images, lambda x: {"tokens": np.zeros(3)})
    with pytest.raises(ValueError, match="keys name files"):
        encode_in_memory(images, lambda x: {"../tokens": np.zeros(len(x))})
    shapes = iter([(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="same keys, dtypes and per-item shapes"):
        encode_in_memory(images, lambda x: {"tokens": np.zeros((len(x), *next(shapes)))}, batch_size=2)
    dataset = image_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="plain JSON data"):
        write_cache(dataset, encode, str(tmp_path / "cache"), header={"encoder": object()}, **SETTINGS)


def test_a_damaged_manifest_or_shard_and_a_file_given_as_folder_are_named_in_one_line(tmp_path):
    import shutil

    dataset = image_dataset(tmp_path / "data")
    folder = tmp_path / "cache"
    write_cache(dataset, encode, str(folder), header=HEADER, **SETTINGS)
    cut = tmp_path / "cut-manifest"
    shutil.copytree(folder, cut)
    text = (cut / "manifest.json").read_text()
    (cut / "manifest.json").write_text(text[:len(text) // 2])  # a copy or a full disk cut it short
    with pytest.raises(ValueError, match=r"cut-manifest/manifest\.json is damaged .*delete the cache folder and "
                                         r"rerun") as refused:
        CacheStore.open(str(cut))
    assert "\n" not in str(refused.value)
    cut = tmp_path / "cut-shard"
    shutil.copytree(folder, cut)
    shard = sorted(cut.glob("shard-*.latents.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"cache shard .*{shard.name} is damaged .*rerun"):
        CacheStore.open(str(cut))
    (tmp_path / "a-file").write_text("not a cache")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        CacheStore.open(str(tmp_path / "a-file"))


def _rank_main(rank, world, port, dataset, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        store = write_cache(dataset, encode, folder, header=HEADER, **SETTINGS)
        if store is None or store.num_items != 8:  # every rank gets the finished store
            raise RuntimeError(f"rank {rank} got {store}")
    finally:
        distributed.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_same_cache_as_one(tmp_path):
    import torch.multiprocessing as mp

    dataset = image_dataset(tmp_path / "data")
    write_cache(dataset, encode, str(tmp_path / "single"), header=HEADER, **SETTINGS)
    mp.spawn(_rank_main, args=(2, free_port(), dataset, str(tmp_path / "multi")), nprocs=2)
    multi = CacheStore.open(str(tmp_path / "multi"))
    assert {s["file"][:8] for s in multi.manifest["shards"]} == {"shard-r0", "shard-r1"}
    assert_same_cache(multi, CacheStore.open(str(tmp_path / "single")))
