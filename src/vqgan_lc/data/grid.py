"""Writing images: one PNG, PNG grids of images, and of originals above their reconstructions
(PIL, no torchvision). Every stage that writes pictures (training samples, reports, `decode`,
`sample`) writes them through `save_png`."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from vqgan_lc.data.transforms import from_tensor, to_uint8
from vqgan_lc.files import atomic_path

PADDING = 2  # pixels of white between tiles
COMPARISON_COLUMNS = 8


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [-1, 1] -> (N,H,W,3) uint8."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N,3,H,W) in [-1,1], got {tuple(images.shape)}")
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def _tile(tiles: np.ndarray, nrow: int) -> np.ndarray:
    """(N,H,W,3) -> one canvas with `nrow` tiles per row, row-major, white padding."""
    n, h, w, _ = tiles.shape
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + PADDING) + PADDING, nrow * (w + PADDING) + PADDING, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = PADDING + r * (h + PADDING), PADDING + c * (w + PADDING)
        canvas[top : top + h, left : left + w] = tiles[i]
    return canvas


def save_png(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> None:
    """Write one PNG atomically: a (3, H, W) tensor in [-1, 1] (clamped) or an (H, W, 3) uint8 array."""
    picture = from_tensor(image) if isinstance(image, torch.Tensor) else Image.fromarray(image)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """Save (N,3,H,W) images in [-1, 1] as a PNG grid with `nrow` images per row."""
    if nrow < 1 or images.shape[0] < 1:
        raise ValueError(f"save_grid needs nrow >= 1 and at least one image, got nrow={nrow}, {images.shape[0]} images")
    save_png(_tile(_to_uint8(images), nrow), path)


def save_comparison_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, max_images: int = 16
) -> None:
    """Save the first `max_images` pairs: each row of originals (up to 8) directly above the
    row of their reconstructions."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape")
    n = min(originals.shape[0], max_images)
    if n < 1:
        raise ValueError("save_comparison_grid needs at least one image pair")
    cols = min(n, COMPARISON_COLUMNS)
    top, bottom = _to_uint8(originals[:n]), _to_uint8(reconstructions[:n])
    tiles = []
    for start in range(0, n, cols):
        for block in (top, bottom):
            chunk = block[start : start + cols]
            if len(chunk) < cols:  # keep every pair in the same column: pad the short last row
                chunk = np.concatenate([chunk, np.full((cols - len(chunk), *chunk.shape[1:]), 255, np.uint8)])
            tiles.append(chunk)
    save_png(_tile(np.concatenate(tiles), cols), path)


def pyplot(purpose: str):
    """matplotlib's pyplot on the file-only Agg backend, or one line naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(f"{purpose} with matplotlib: pip install 'vqgan-lc[demo]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
