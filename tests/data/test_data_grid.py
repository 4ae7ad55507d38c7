import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.data.grid import PADDING, save_comparison_grid, save_grid


def test_save_grid_layout_and_pixels(tmp_path):
    images = torch.stack([torch.full((3, 8, 10), v) for v in (-1.0, 0.0, 1.0)])  # black, grey, white
    path = tmp_path / "sub" / "grid.png"
    save_grid(images, path, nrow=2)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (2 * (8 + PADDING) + PADDING, 2 * (10 + PADDING) + PADDING, 3)
    assert (arr[PADDING : PADDING + 8, PADDING : PADDING + 10] == 0).all()
    assert (arr[PADDING : PADDING + 8, 2 * PADDING + 10 : 2 * PADDING + 20] == 128).all()  # 0 -> 127.5 rounds to 128
    assert (arr[2 * PADDING + 8 : 2 * PADDING + 16, PADDING : PADDING + 10] == 255).all()


def test_comparison_grid_puts_each_reconstruction_below_its_original(tmp_path):
    n, size = 10, 4
    originals = torch.linspace(-1, 1, n).view(n, 1, 1, 1).expand(n, 3, size, size)
    recons = -originals
    path = tmp_path / "cmp.png"
    save_comparison_grid(originals, recons, path, max_images=n)
    arr = np.asarray(Image.open(path)).astype(int)
    step = size + PADDING
    # 8 columns; rows: originals 0-7, their reconstructions, originals 8-9, their reconstructions
    assert arr.shape[:2] == (4 * step + PADDING, 8 * step + PADDING)
    for i in range(n):
        r, c = divmod(i, 8)
        top = arr[PADDING + 2 * r * step, PADDING + c * step, 0]
        below = arr[PADDING + (2 * r + 1) * step, PADDING + c * step, 0]
        assert top == round((originals[i, 0, 0, 0].item() + 1) * 127.5)
        assert below == round((recons[i, 0, 0, 0].item() + 1) * 127.5)


def test_comparison_grid_limits_and_errors(tmp_path):
    x = torch.zeros(20, 3, 4, 4)
    save_comparison_grid(x, x, tmp_path / "a.png", max_images=3)
    assert np.asarray(Image.open(tmp_path / "a.png")).shape[1] == 3 * (4 + PADDING) + PADDING
    with pytest.raises(ValueError, match="differ in shape"):
        save_comparison_grid(x, x[:2], tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        save_grid(torch.zeros(2, 1, 4, 4), tmp_path / "c.png", nrow=2)


def test_save_png_writes_a_tensor_in_minus_one_one_and_a_uint8_array_alike(tmp_path):
    from vqgan_lc.data.grid import save_png

    image = torch.tensor([-1.5, 0.0, 1.0]).view(3, 1, 1).expand(3, 4, 5)  # out of range is clamped
    save_png(image, tmp_path / "a" / "from_tensor.png")
    pixels = np.asarray(Image.open(tmp_path / "a" / "from_tensor.png"))
    assert pixels.shape == (4, 5, 3) and (pixels == [0, 128, 255]).all()
    save_png(pixels, tmp_path / "from_array.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "from_array.png")), pixels)
