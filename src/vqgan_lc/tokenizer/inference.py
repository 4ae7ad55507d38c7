"""Tokenizers applied to files: images -> token ids (.npy), ids -> images, images -> reconstructions.

What the `encode`, `decode` and `reconstruct` commands run. Inputs are never overwritten and
two inputs never write the same output: output names are the inputs' stems, made unique with
an index prefix when stems repeat (e.g. a/cat.png and b/cat.png), and an output that would land
on an input file is refused before any work. Unreadable inputs are reported one per line and
skipped; the summary says how many were written.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import EvalTransform, ImageError, load_image
from ..data.grid import save_png
from ..files import atomic_save_npy
from .model import VQModel


@dataclass
class FileRunSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)

    def line(self, what: str, out_dir: Path) -> str:
        extra = f"; {len(self.skipped)} unreadable input(s) skipped" if self.skipped else ""
        return f"{len(self.written)} {what} written to {out_dir}{extra}"


def output_names(paths: list[str], suffix: str) -> list[str]:
    """One output file name per input: the stem, index-prefixed where stems would collide."""
    stems = [Path(p).stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    width = len(str(len(paths)))
    return [f"{i:0{width}d}_{s}{suffix}" if s in repeated else f"{s}{suffix}" for i, s in enumerate(stems)]


def _plan(paths: list[str], out_dir: str | os.PathLike, suffix: str) -> list[Path]:
    folders = [p for p in paths if os.path.isdir(p)]
    if folders:  # a usage error, not an unreadable file: refused before any work
        raise ValueError(f"{folders[0]} is a folder; pass the files themselves (e.g. {os.path.join(folders[0], '*')})")
    out = Path(out_dir)
    targets = [out / name for name in output_names(paths, suffix)]
    inputs = {Path(p).resolve() for p in paths}
    for target in targets:
        if target.resolve() in inputs:
            raise ValueError(f"output {target} would overwrite an input file; choose another --out")
    return targets


def _skip(summary: FileRunSummary, path: str, reason: str) -> None:
    # the image loader's messages begin with the path, which every report line shows already
    reason = reason[len(path) + 2:] if reason.startswith(f"{path}: ") else reason
    summary.skipped.append((path, reason))


def _image_batches(paths: list[str], targets: list[Path], size: int, summary: FileRunSummary, batch_size: int = 8):
    """Batches of (images, targets) of the readable inputs; unreadable ones are reported and skipped."""
    transform = EvalTransform(size)
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for path, target in zip(paths[start:start + batch_size], targets[start:start + batch_size]):
            try:
                images.append(transform(load_image(path)))
                kept.append(target)
            except ImageError as err:
                _skip(summary, path, str(err))
        if images:
            yield torch.stack(images), kept


def _finish(summary: FileRunSummary, total: int) -> FileRunSummary:
    """Nothing written: one error line. Some written: one stderr line per skipped input."""
    if total and not summary.written:
        path, reason = summary.skipped[0]
        others = f" (and {total - 1} other input(s), none readable)" if total > 1 else ""
        raise ValueError(f"{path}: {reason}{others}")
    for path, reason in summary.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return summary


@torch.no_grad()
def reconstruct_files(model: VQModel, paths: list[str], out_dir: str | os.PathLike,
                      image_size: int | None = None) -> FileRunSummary:
    targets, summary = _plan(paths, out_dir, ".png"), FileRunSummary()
    size = image_size or model.config.autoencoder.resolution
    for images, kept in _image_batches(paths, targets, size, summary):
        recon = model(images.to(model.device)).reconstruction.cpu()
        for target, image in zip(kept, recon):
            save_png(image, target)
            summary.written.append(target)
    return _finish(summary, len(paths))


@torch.no_grad()
def encode_files(model: VQModel, paths: list[str], out_dir: str | os.PathLike,
                 image_size: int | None = None) -> FileRunSummary:
    """One int32 (h, w) array of token ids per image (int64 only for codebooks beyond 2^31 entries)."""
    targets, summary = _plan(paths, out_dir, ".npy"), FileRunSummary()
    size = image_size or model.config.autoencoder.resolution
    dtype = np.int32 if model.codebook_size < 2**31 else np.int64
    for images, kept in _image_batches(paths, targets, size, summary):
        indices = model.encode(images.to(model.device)).indices.cpu().numpy()
        for target, idx in zip(kept, indices):
            atomic_save_npy(target, idx.astype(dtype))
            summary.written.append(target)
    return _finish(summary, len(paths))


def read_token_file(path: str) -> np.ndarray:
    """A 2-D integer .npy array of token ids, or one line saying what is wrong with the file."""
    if not os.path.isfile(path):
        raise ImageError("no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):  # a zip: np.savez writes these
        raise ImageError("an .npz archive, not a .npy array of token ids; save each array with np.save")
    if magic != b"\x93NUMPY":  # numpy's own guess for other files speaks of pickles, which misleads
        raise ImageError("not a .npy file; token ids are (h, w) integer arrays saved with np.save (see `vqgan-lc encode`)")
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ImageError(f"not a .npy array of token ids ({err})") from None
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer) or 0 in idx.shape:
        raise ImageError(f"expected a 2-D integer array (h, w) with no empty side, got {idx.dtype} {idx.shape}")
    return idx


@torch.no_grad()
def decode_files(model: VQModel, paths: list[str], out_dir: str | os.PathLike) -> FileRunSummary:
    targets, summary = _plan(paths, out_dir, ".png"), FileRunSummary()
    for path, target in zip(paths, targets):
        try:
            idx = torch.from_numpy(read_token_file(path).astype(np.int64))[None].to(model.device)
            image = model.decode_indices(idx)[0].cpu()
        except ValueError as err:  # unreadable file (ImageError), ids outside the codebook
            _skip(summary, path, str(err))
            continue
        save_png(image, target)
        summary.written.append(target)
    return _finish(summary, len(paths))
