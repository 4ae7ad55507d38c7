import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.data.transforms import (
    EvalTransform,
    TrainTransform,
    center_crop,
    from_tensor,
    item_generator,
    random_crop,
    random_hflip,
    resize_short_side,
    to_tensor,
    to_uint8,
)


def _noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _columns(width, height):
    """Red channel = column index, so crops can be located exactly."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.arange(width)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    return Image.fromarray(pixels)


def test_resize_short_side_shapes():
    assert resize_short_side(_noise(300, 200), 100).size == (150, 100)
    assert resize_short_side(_noise(200, 300), 100).size == (100, 150)
    assert resize_short_side(_noise(40, 30), 60).size == (80, 60)  # upscales
    img = _noise(64, 64)
    assert resize_short_side(img, 64) is img


def test_downscale_is_antialiased():
    # A 1-pixel checkerboard averages to grey; a non-antialiased resize would alias it.
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    small = np.asarray(resize_short_side(Image.fromarray(checker).convert("RGB"), 32))
    assert np.abs(small.astype(int) - 128).max() < 10


def test_center_and_random_crop_positions():
    img = _columns(60, 30)
    crop = np.asarray(center_crop(img, 30))
    assert crop[0, 0, 0] == 15 and crop[0, -1, 0] == 44 and crop.shape == (30, 30, 3)
    a = random_crop(img, 30, item_generator(0, 0, 5))
    b = random_crop(img, 30, item_generator(0, 0, 5))
    assert a.size == (30, 30) and np.array_equal(np.asarray(a), np.asarray(b))
    lefts = {int(np.asarray(random_crop(img, 30, item_generator(0, 0, i)))[0, 0, 0])
             for i in range(40)}
    assert len(lefts) > 10 and min(lefts) >= 0 and max(lefts) <= 30
    with pytest.raises(ValueError, match="smaller than 31"):
        center_crop(img, 31)


def test_random_hflip_flips_about_half():
    img = _columns(8, 2)
    flips = [np.asarray(random_hflip(img, item_generator(1, 0, i)))[0, 0, 0] == 7
             for i in range(200)]
    assert 70 < sum(flips) < 130


def test_item_generator_depends_on_every_part():
    draws = {tuple(torch.rand(2, generator=item_generator(s, e, i)).tolist())
             for s in range(3) for e in range(3) for i in range(3)}
    assert len(draws) == 27
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        item_generator(0, -1, 0)


def test_tensor_round_trip_and_range():
    img = _noise(17, 9)
    t = to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 9, 17)
    assert t.min() >= -1.0 and t.max() <= 1.0
    assert np.array_equal(np.asarray(from_tensor(t)), np.asarray(img))
    white = to_tensor(Image.new("RGB", (2, 2), (255, 0, 255)))
    assert white[0].eq(1.0).all() and white[1].eq(-1.0).all()
    assert to_uint8(torch.tensor([-3.0, 0.0, 3.0])).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="expected an RGB image"):
        to_tensor(Image.new("L", (2, 2)))
    with pytest.raises(ValueError, match=r"expected a \(3, H, W\) tensor"):
        from_tensor(torch.zeros(1, 3, 4, 4))


def test_train_and_eval_transforms():
    img = _noise(120, 80)
    train = TrainTransform(32)
    a = train(img, item_generator(0, 2, 7))
    b = train(img, item_generator(0, 2, 7))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, train(img, item_generator(0, 3, 7)))
    ev = EvalTransform(32)
    expected = to_tensor(center_crop(resize_short_side(img, 32), 32))
    assert torch.equal(ev(img), expected)
    with pytest.raises(ValueError, match="positive integer"):
        TrainTransform(0)
