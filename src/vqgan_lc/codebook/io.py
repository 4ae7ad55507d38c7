"""The codebook file: one safetensors tensor `codebook` (N, C) float32 plus metadata.

safetensors metadata is a str -> str map; every value is stored JSON-encoded so numbers
come back as numbers. Typical keys: backbone, layer, input_size, pooling, mode, k, seed,
inertia, num_images, num_vectors, fingerprint, and for per-class codebooks
entries_per_class / class_names. `VQModel` (given a path) reads the file with `load_codebook` and
hands its tensor to the LC quantizer.

Both `save_codebook` and `load_codebook` refuse a codebook no quantizer can use (no entries,
NaN/inf values, every entry the same vector) and warn when many entries repeat another.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .exemplars import Exemplars
from ..config import renamed

CODEBOOK_KEY = "codebook"
FORMAT_VERSION = 1
# Above this fraction of entries that repeat an earlier one, a warning says so: a repeated
# entry is never chosen (the search resolves ties to the lowest index), so it is dead weight.
DUPLICATE_WARN_FRACTION = 0.10

logger = logging.getLogger(__name__)


@dataclass
class Codebook:
    vectors: torch.Tensor  # (N, C) float32
    metadata: dict[str, str | int | float | list] = field(default_factory=dict)
    exemplars: "Exemplars | None" = None  # nearest feature vectors per entry (codebook/exemplars.py), from builds

    @property
    def codebook_size(self) -> int:
        return int(self.vectors.shape[0])

    size = renamed("codebook_size", "size")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _count_repeats(rows: np.ndarray) -> int:
    """How many rows of the (N, C) float32 matrix repeat an earlier row exactly (-0.0 == 0.0)."""
    n, c = rows.shape
    # Equal rows agree on every column, so when the first few columns already tell all rows
    # apart (any k-means codebook) whole rows are never copied and compared.
    repeats = 0
    for width in dict.fromkeys((min(c, 4), c)):
        keys = np.ascontiguousarray(rows[:, :width] + np.float32(0.0))  # + 0.0 turns -0.0 into 0.0
        repeats = n - int(np.unique(keys.view(np.dtype((np.void, keys.itemsize * width))).ravel()).size)
        if repeats == 0:
            break
    return repeats


def check_codebook(vectors: torch.Tensor, source: str) -> None:
    """Refuse, in one line, a codebook no quantizer can use; warn when many entries repeat.

    `vectors`: the (N, C) float32 CPU matrix; `source` names it in the messages. The checks
    run in numpy, several times faster than torch's on a 100,000 x 768 codebook.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"{source}: expected a non-empty (N, C) matrix, got shape {tuple(vectors.shape)}; "
                         "build the codebook with `vqgan-lc codebook build`")
    rows = vectors.numpy()
    n = rows.shape[0]
    finite = np.isfinite(rows)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise ValueError(f"{source}: the codebook holds NaN or infinite values ({bad} of {n} entries); "
                         "rebuild it from finite features with `vqgan-lc codebook build`")
    # An all-zero matrix is a buffer that was never filled; N equal entries map every token
    # to entry 0 (and standardising them divides zero by zero).
    if not rows.any():
        raise ValueError(f"{source}: every codebook entry is all zeros (an unfilled placeholder); "
                         "rebuild it with `vqgan-lc codebook build`")
    if n > 1 and (rows.max(axis=0) == rows.min(axis=0)).all():
        raise ValueError(f"{source}: all {n} codebook entries are the same vector, so every token would map "
                         "to entry 0; rebuild it from varied features with `vqgan-lc codebook build`")
    repeats = _count_repeats(rows)
    if repeats > DUPLICATE_WARN_FRACTION * n:
        logger.warning("%s: %d of %d codebook entries (%.0f%%) repeat an earlier entry and can never be "
                       "chosen, so only %d are usable; rebuild from more images or with a smaller --size",
                       source, repeats, n, 100.0 * repeats / n, n - repeats)


def save_codebook(path: str | os.PathLike, vectors: torch.Tensor | np.ndarray, metadata: dict,
                  exemplars: "Exemplars | None" = None) -> None:
    """Write atomically (files.atomic_save_safetensors), so a crash never leaves half a codebook.

    `exemplars` (from a build) go to the sidecar beside it (`exemplars.exemplars_path`), written
    first, so a codebook file never names exemplars that are not on disk yet."""
    from ..files import atomic_save_safetensors
    from .exemplars import exemplars_path, save_exemplars

    tensor = torch.as_tensor(vectors).detach().to("cpu", torch.float32).contiguous()
    check_codebook(tensor, "save_codebook")
    meta = {"format_version": FORMAT_VERSION, **metadata, "size": tensor.shape[0], "dim": tensor.shape[1]}
    encoded = {str(k): json.dumps(v) for k, v in meta.items()}
    if exemplars is not None:
        save_exemplars(exemplars_path(path), exemplars)
    atomic_save_safetensors({CODEBOOK_KEY: tensor}, path, metadata=encoded)


def _decode(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:  # written by another tool as a plain string
        return value


def load_codebook(path: str | os.PathLike) -> Codebook:
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"codebook file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            if CODEBOOK_KEY not in f.keys():
                raise ValueError(f"{path} is not a codebook file: no {CODEBOOK_KEY!r} tensor (has {sorted(f.keys())[:5]})")
            vectors = f.get_tensor(CODEBOOK_KEY).float()
            raw = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a codebook file: {' '.join(str(err).split())}") from None
    if vectors.ndim != 2:
        raise ValueError(f"{path} is not a codebook file: {CODEBOOK_KEY!r} has shape {tuple(vectors.shape)}, expected (N, C)")
    check_codebook(vectors, path)
    return Codebook(vectors=vectors, metadata={k: _decode(v) for k, v in raw.items()})


def describe_codebook(codebook: Codebook, path: str = "") -> str:
    """Human-readable summary for `vqgan-lc codebook info` (long lists abbreviated)."""
    lines = [f"codebook {path}".rstrip(), f"  entries x dim: {codebook.codebook_size} x {codebook.dim}"]
    norms = codebook.vectors.norm(dim=1)
    lines.append(f"  entry norm: mean {norms.mean():.4g}  min {norms.min():.4g}  max {norms.max():.4g}")
    for key in sorted(codebook.metadata):
        value = codebook.metadata[key]
        if isinstance(value, list) and len(value) > 8:
            value = f"[{', '.join(map(str, value[:8]))}, ...] ({len(value)} items)"
        elif isinstance(value, dict):
            value = json.dumps(value)
        lines.append(f"  {key}: {value}")
    if path:
        lines.append(f"  exemplars: {_describe_exemplars(codebook, path)}")
    return "\n".join(lines)


def _describe_exemplars(codebook: Codebook, path: str) -> str:
    from .exemplars import exemplars_path, load_exemplars

    sidecar = exemplars_path(path)
    if not sidecar.is_file():
        return "none recorded (rebuild with `vqgan-lc codebook build` to record them)"
    try:
        found = load_exemplars(sidecar, codebook.vectors)
    except ValueError as err:
        return f"unusable: {err}"
    filled = int((found.image >= 0).sum())
    source = "image files" if found.paths is not None else "pictures kept in the file"
    return (f"{sidecar} ({found.per_entry} per entry, {filled} in all, from {len(found.image_label)} images, "
            f"{source}; {sidecar.stat().st_size / 2**20:.1f} MB)")
