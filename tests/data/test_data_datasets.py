import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqgan_lc.data.datasets import ImageDataset, build_dataset, collate_skip_corrupt
from vqgan_lc.data.demo import DemoCrops
from vqgan_lc.data.images import list_images


def _write_noise(path, width, height, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder_with_corrupt(tmp_path):
    for i in range(3):
        _write_noise(tmp_path / "cls_a" / f"good{i}.png", 80, 48, i)
    _write_noise(tmp_path / "cls_b" / "good3.png", 48, 80, 3)
    (tmp_path / "cls_b" / "bad_garbage.jpg").write_bytes(b"\x00not an image" * 10)
    _write_noise(tmp_path / "cls_b" / "full.png", 48, 48, 9)
    data = (tmp_path / "cls_b" / "full.png").read_bytes()
    (tmp_path / "cls_b" / "full.png").unlink()
    (tmp_path / "cls_b" / "bad_truncated.png").write_bytes(data[: len(data) // 3])
    return tmp_path


def test_items_have_the_documented_form(folder_with_corrupt):
    ds = ImageDataset(list_images(folder_with_corrupt), size=32, train=True)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["label"] == 0 and item["index"] == 0
    assert ds.class_names == ["cls_a", "cls_b"]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_unlabelled_items_get_label_minus_one(tmp_path):
    _write_noise(tmp_path / "a.png", 40, 40, 0)
    assert build_dataset(str(tmp_path), 32, train=False)[0]["label"] == -1


def test_corrupt_files_are_skipped_counted_and_reported(folder_with_corrupt):
    ds = build_dataset(str(folder_with_corrupt), 32, train=False)
    assert isinstance(ds, ImageDataset) and len(ds) == 6
    loader = DataLoader(ds, batch_size=6, collate_fn=collate_skip_corrupt)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["num_skipped"] == 2
    assert sorted(os.path.basename(p) for p, _ in batch["skipped"]) == [
        "bad_garbage.jpg", "bad_truncated.png"]
    assert all("cannot decode image" in reason for _, reason in batch["skipped"])
    assert sorted(os.path.basename(p) for p, _ in ds.skipped) == [
        "bad_garbage.jpg", "bad_truncated.png"]
    assert batch["label"].tolist() == [0, 0, 0, 1]
    # A second pass does not count the same file twice in the dataset's own list.
    next(iter(loader))
    assert len(ds.skipped) == 2


def test_skip_reports_cross_dataloader_workers(folder_with_corrupt):
    ds = build_dataset(str(folder_with_corrupt), 32, train=False)
    loader = DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_skip_corrupt)
    batches = list(loader)
    assert sum(b["num_skipped"] for b in batches) == 2
    assert sorted(os.path.basename(p) for b in batches for p, _ in b["skipped"]) == [
        "bad_garbage.jpg", "bad_truncated.png"]
    assert sum(len(b["index"]) for b in batches) == 4


def test_all_corrupt_batch_is_empty_not_an_error(folder_with_corrupt):
    ds = build_dataset(str(folder_with_corrupt), 32, train=False)
    bad = [i for i, r in enumerate(ds.records) if "bad" in r.path]
    batch = collate_skip_corrupt([ds[i] for i in bad])
    assert batch["image"].shape[0] == 0 and batch["num_skipped"] == 2
    assert len(batch["skipped"]) == 2


def test_train_crops_deterministic_by_seed_epoch_index(folder_with_corrupt):
    records = list_images(folder_with_corrupt)
    good = [i for i, r in enumerate(records) if "good" in r.path]
    first = ImageDataset(records, size=32, train=True, seed=7)
    resumed = ImageDataset(records, size=32, train=True, seed=7)
    first.set_epoch(3)
    resumed.set_epoch(3)
    for i in good:
        assert torch.equal(first[i]["image"], resumed[i]["image"])
    resumed.set_epoch(4)
    assert any(not torch.equal(first[i]["image"], resumed[i]["image"]) for i in good)
    other_seed = ImageDataset(records, size=32, train=True, seed=8)
    other_seed.set_epoch(3)
    assert any(not torch.equal(first[i]["image"], other_seed[i]["image"]) for i in good)
    # Global RNG state plays no part.
    torch.manual_seed(123)
    np.random.seed(123)
    again = first[2]["image"]
    torch.manual_seed(999)
    assert torch.equal(again, first[2]["image"])
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        first.set_epoch(-1)


def test_eval_is_center_crop_and_ignores_epoch(tmp_path):
    pixels = np.zeros((32, 96, 3), np.uint8)
    pixels[..., 0] = np.arange(96)[None, :]
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    ds = build_dataset(str(tmp_path), 32, train=False)
    image = ds[0]["image"]
    red = ((image[0] + 1) * 127.5).round()
    assert red[0, 0] == 32 and red[0, -1] == 63
    ds.set_epoch(5)
    assert torch.equal(ds[0]["image"], image)


def test_upscale_warning_logged_once_with_count(tmp_path, caplog):
    for i in range(3):
        _write_noise(tmp_path / f"small{i}.png", 16, 20, i)
    _write_noise(tmp_path / "large.png", 64, 64, 5)
    ds = build_dataset(str(tmp_path), 32, train=True)
    with caplog.at_level(logging.WARNING, logger="vqgan_lc.data.datasets"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            batch = collate_skip_corrupt([ds[i] for i in range(len(ds))])
            assert batch["num_upscaled"] == 3
    warnings = [r for r in caplog.records if "upscaled" in r.getMessage()]
    assert len(warnings) == 1
    assert ds.num_upscaled == 3
    assert ds.upscale_summary() == "3 of 4 images were upscaled to 32 px"


def test_build_dataset_demo_sources():
    train = build_dataset("demo", 32, train=True)
    assert isinstance(train, DemoCrops) and train.split == "train" and train.train
    ev = build_dataset("demo", 32, train=False)
    assert ev.split == "eval" and not ev.train and len(ev) == 256
    small = build_dataset("demo:eval:10", 32, train=False, seed=3)
    assert len(small) == 10 and small.seed == 3
    on_train_pixels = build_dataset("demo:train", 32, train=False)
    assert on_train_pixels.split == "train" and not on_train_pixels.train
    with pytest.raises(ValueError, match="bad demo source"):
        build_dataset("demo:test", 32, train=True)
