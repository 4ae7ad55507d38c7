"""Image <-> tensor conversion and the train / eval crop pipelines.

Randomness always comes from an explicit `torch.Generator`, never from global RNG state,
so a crop depends only on (seed, epoch, index): resumed runs and DataLoader workers see
exactly the same pixels as an uninterrupted single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) alone, well mixed across all three."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if value < 0:
            raise ValueError(f"item_generator: {name} must be >= 0, got {value}")
    # SeedSequence hashes the triple, so neighbouring indices or epochs get unrelated streams.
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator()
    generator.manual_seed(int(state))
    return generator


def _check_size(size: int, what: str) -> None:
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{what}: size must be a positive integer, got {size!r}")


def short_side_resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling so that the shorter side equals `size`."""
    short = min(width, height)
    return (max(size, round(width * size / short)), max(size, round(height * size / short)))


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` (bicubic; PIL widens the kernel when shrinking,
    which is the antialiasing that keeps downscaled photos free of moire)."""
    _check_size(size, "resize_short_side")
    target = short_side_resize_shape(img.width, img.height, size)
    if target == img.size:
        return img
    return img.resize(target, Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    _check_size(size, "center_crop")
    if img.width < size or img.height < size:
        raise ValueError(f"center_crop: image {img.width}x{img.height} is smaller than {size}")
    left = (img.width - size) // 2
    top = (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(img: Image.Image, size: int, generator: torch.Generator) -> Image.Image:
    _check_size(size, "random_crop")
    if img.width < size or img.height < size:
        raise ValueError(f"random_crop: image {img.width}x{img.height} is smaller than {size}")
    left = int(torch.randint(img.width - size + 1, (1,), generator=generator))
    top = int(torch.randint(img.height - size + 1, (1,), generator=generator))
    return img.crop((left, top, left + size, top + size))


def random_hflip(img: Image.Image, generator: torch.Generator, p: float = 0.5) -> Image.Image:
    # Draw even when p is 0 or 1 so the generator advances the same way for every setting.
    if float(torch.rand((), generator=generator)) < p:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> float32 (3, H, W) in [-1, 1]."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor: expected an RGB image, got mode {img.mode!r}")
    # Converted in numpy: torch's intra-op thread pool costs ~100x more than the arithmetic
    # on one small image when the cores are busy (e.g. while the main process trains).
    pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (3, H, W)
    scaled = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled))


def to_uint8(t: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float tensor (..., 3, H, W) -> uint8 tensor of the same shape (clamped)."""
    return ((t.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)


def from_tensor(t: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> 8-bit RGB image (values outside are clamped)."""
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"from_tensor: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    pixels = to_uint8(t.cpu()).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels, mode="RGB")


@dataclass(frozen=True)
class TrainTransform:
    """Short side to `size`, random `size` x `size` crop, optional horizontal flip."""

    size: int
    hflip: bool = True

    def __post_init__(self) -> None:
        _check_size(self.size, "TrainTransform")

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        img = random_crop(resize_short_side(img, self.size), self.size, generator)
        if self.hflip:
            img = random_hflip(img, generator)
        return to_tensor(img)


@dataclass(frozen=True)
class EvalTransform:
    """Short side to `size`, centre `size` x `size` crop; deterministic."""

    size: int

    def __post_init__(self) -> None:
        _check_size(self.size, "EvalTransform")

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return to_tensor(center_crop(resize_short_side(img, self.size), self.size))
