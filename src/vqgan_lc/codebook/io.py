"""The codebook file: one safetensors tensor `codebook` (N, C) float32 plus metadata.

safetensors metadata is a str -> str map; every value is stored JSON-encoded so numbers
come back as numbers. Typical keys: backbone, layer, input_size, pooling, mode, k, seed,
inertia, num_images, num_vectors, fingerprint, and for per-class codebooks
entries_per_class / class_names. The LC quantizer loads the file with `load_codebook`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

CODEBOOK_KEY = "codebook"
FORMAT_VERSION = 1


@dataclass
class Codebook:
    vectors: torch.Tensor  # (N, C) float32
    metadata: dict[str, str | int | float | list] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def save_codebook(path: str | os.PathLike, vectors: torch.Tensor | np.ndarray, metadata: dict) -> None:
    """Write atomically (temporary file + os.replace), so a crash never leaves half a codebook."""
    from safetensors.torch import save_file

    tensor = torch.as_tensor(vectors).detach().to("cpu", torch.float32).contiguous()
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(f"save_codebook: expected a non-empty (N, C) matrix, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("save_codebook: the codebook holds NaN or infinite values")
    meta = {"format_version": FORMAT_VERSION, **metadata, "size": tensor.shape[0], "dim": tensor.shape[1]}
    encoded = {str(k): json.dumps(v) for k, v in meta.items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({CODEBOOK_KEY: tensor}, tmp, metadata=encoded)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    return Codebook(vectors=vectors, metadata={k: _decode(v) for k, v in raw.items()})


def describe_codebook(codebook: Codebook, path: str = "") -> str:
    """Human-readable summary for `vqgan-lc codebook info` (long lists abbreviated)."""
    lines = [f"codebook {path}".rstrip(), f"  entries x dim: {codebook.size} x {codebook.dim}"]
    norms = codebook.vectors.norm(dim=1)
    lines.append(f"  entry norm: mean {norms.mean():.4g}  min {norms.min():.4g}  max {norms.max():.4g}")
    for key in sorted(codebook.metadata):
        value = codebook.metadata[key]
        if isinstance(value, list) and len(value) > 8:
            value = f"[{', '.join(map(str, value[:8]))}, ...] ({len(value)} items)"
        elif isinstance(value, dict):
            value = json.dumps(value)
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
