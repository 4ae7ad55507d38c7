import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.data.datasets import collate_skip_corrupt
from vqgan_lc.data.demo import DemoCrops, demo_photos, demo_region, random_square_box
from vqgan_lc.data.transforms import item_generator, to_tensor


def test_demo_photos_are_real_rgb_photos_in_fixed_order():
    photos = demo_photos()
    names = [name for name, _ in photos]
    assert len(photos) == 16 and len(set(names)) == 16
    assert names[:3] == ["astronaut", "chelsea", "coffee"] and "china" in names
    for name, img in photos:
        assert img.mode == "RGB" and min(img.size) >= 256, name
        assert np.asarray(img).std() > 5, name  # real content, not a blank stand-in
    assert [n for n, _ in demo_photos()] == names
    assert demo_photos()[0][1] is photos[0][1]  # decoded once, then cached


@pytest.mark.parametrize("size", [(640, 427), (427, 640), (512, 512)])
def test_regions_tile_the_photo_without_overlap(size):
    train = demo_region(size, "train")
    held = demo_region(size, "eval")
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(train) + area(held) == size[0] * size[1]
    overlap_w = min(train[2], held[2]) - max(train[0], held[0])
    overlap_h = min(train[3], held[3]) - max(train[1], held[1])
    assert overlap_w <= 0 or overlap_h <= 0
    # The long axis is the one that is cut, so both regions keep the full short side.
    assert min(held[2] - held[0], held[3] - held[1]) == round(max(size) * 0.25)
    with pytest.raises(ValueError, match="split must be one of"):
        demo_region(size, "test")


def test_crop_boxes_stay_inside_their_region_and_span_the_scale():
    box_sides = []
    for split in ("train", "eval"):
        ds = DemoCrops(32, 96, split=split, seed=1)
        for i in range(len(ds)):
            label, *box = ds.crop_box(i)
            left, top, right, bottom = demo_region(demo_photos()[label][1].size, split)
            assert left <= box[0] < box[2] <= right and top <= box[1] < box[3] <= bottom
            assert box[2] - box[0] == box[3] - box[1]  # square
            short = min(right - left, bottom - top)
            box_sides.append((box[2] - box[0]) / short)
    assert min(box_sides) < 0.3 and max(box_sides) > 0.85
    assert all(0.14 <= s <= 1.0 for s in box_sides)


def test_items_shapes_labels_and_pixels():
    ds = DemoCrops(48, 20, split="eval", seed=0)
    batch = collate_skip_corrupt([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (20, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [i % 16 for i in range(20)]
    assert batch["index"].tolist() == list(range(20))
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # An eval item is exactly the box resized (no flip).
    label, *box = ds.crop_box(3)
    photo = demo_photos()[label][1]
    expected = to_tensor(photo.resize((48, 48), Image.Resampling.BICUBIC, box=tuple(box)))
    assert torch.equal(ds[3]["image"], expected)


def test_determinism_by_seed_epoch_index():
    a = DemoCrops(32, 8, split="train", seed=5)
    b = DemoCrops(32, 8, split="train", seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(8))
    b.set_epoch(3)
    assert sum(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(8)) >= 6
    c = DemoCrops(32, 8, split="train", seed=6)
    c.set_epoch(2)
    assert sum(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(8)) >= 6
    # Eval crops are fixed: the same pixels are scored every epoch.
    ev = DemoCrops(32, 4, split="eval")
    first = [ev[i]["image"] for i in range(4)]
    ev.set_epoch(9)
    assert all(torch.equal(x, ev[i]["image"]) for i, x in enumerate(first))


def test_train_split_flips_and_eval_split_does_not():
    ds = DemoCrops(32, 64, split="train", seed=0)
    flipped = 0
    for i in range(64):
        label, *box = ds.crop_box(i)
        plain = to_tensor(demo_photos()[label][1].resize((32, 32), Image.Resampling.BICUBIC,
                                                       box=tuple(box)))
        image = ds[i]["image"]
        assert torch.equal(image, plain) or torch.equal(image, plain.flip(-1))
        flipped += not torch.equal(image, plain)
    assert 15 < flipped < 49


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        DemoCrops(32, 4, split="val")
    with pytest.raises(ValueError, match="scale must satisfy"):
        DemoCrops(32, 4, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="must be positive"):
        DemoCrops(32, 0)
    with pytest.raises(IndexError):
        DemoCrops(32, 4)[4]


def test_random_square_box_respects_a_fixed_scale():
    box = random_square_box((10, 20, 110, 70), (0.5, 0.5), item_generator(0, 0, 0))
    assert box[2] - box[0] == 25 and 10 <= box[0] and box[2] <= 110 and 20 <= box[1] <= 45
