"""Reading extracted features: the manifest, and the fp16 shards as one array-like.

An extraction folder holds
  manifest.json          what was extracted (see `features.py`), written last
  shard-r<R>-<NNNNN>.npy fp16 (vectors, C) per shard, rank R, in dataset order
  skipped.txt            unreadable images, one "path<TAB>reason" per line
  rank<R>.json           per-rank progress, used to resume an interrupted run

`ShardedRows` reads rows across shards through memory maps, so a per-class or per-cell
k-means loads one group at a time and RAM stays bounded whatever the dataset size.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

MANIFEST = "manifest.json"
SKIPPED = "skipped.txt"


def dataset_fingerprint(records) -> str:
    """sha256 of the listing (path and label of every image, in order): names the dataset."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path}\t{'' if r.label is None else r.label}\n".encode())
    return digest.hexdigest()[:16]


def features_key(fingerprint: str, origin: dict, pool: int) -> str:
    """Cache key: same dataset + backbone (+ layer, size, weights) + pooling -> same features."""
    text = json.dumps({"fingerprint": fingerprint, "origin": origin, "pool": pool}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class ShardedRows:
    """Read-only (N, C) fp16 matrix spread over .npy shards; supports len, slices and row indices."""

    def __init__(self, files: list[str]):
        self._maps = [np.load(f, mmap_mode="r") for f in files]
        dims = {m.shape[1] for m in self._maps}
        if len(dims) > 1:
            raise ValueError(f"feature shards disagree on the vector width: {sorted(dims)}")
        self.dim = dims.pop() if dims else 0
        self._offsets = np.cumsum([0] + [len(m) for m in self._maps])
        self.dtype = np.dtype(np.float16)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __array__(self, dtype=None, copy=None):
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("ShardedRows: index with a slice or a 1-d array of row numbers")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"ShardedRows: row index out of range for {len(self)} rows")
        out = np.empty((rows.size, self.dim), dtype=np.float16)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard):
            where = shard == s
            out[where] = self._maps[s][rows[where] - self._offsets[s]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for s, m in enumerate(self._maps):
            lo, hi = max(start, self._offsets[s]), min(stop, self._offsets[s + 1])
            if lo < hi:
                pieces.append(m[lo - self._offsets[s]:hi - self._offsets[s]])
        return np.concatenate(pieces) if pieces else np.empty((0, self.dim), dtype=np.float16)


@dataclass
class FeatureStore:
    """A finished extraction folder: `vectors` (N, C) fp16 rows, labels per vector, manifest."""

    folder: str
    manifest: dict
    vectors: ShardedRows

    @classmethod
    def open(cls, folder: str) -> "FeatureStore":
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder}: no {MANIFEST}; the extraction did not finish (run it again to resume)")
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
        vectors = ShardedRows(files)
        expected = len(manifest["image_ids"]) * manifest["vectors_per_image"]
        if len(vectors) != expected:
            raise ValueError(f"{folder}: shards hold {len(vectors)} vectors, the manifest expects {expected}")
        return cls(folder, manifest, vectors)

    @property
    def num_images(self) -> int:
        return len(self.manifest["image_ids"])

    def vector_labels(self) -> np.ndarray | None:
        """Class label of every vector (images' labels repeated), or None for unlabelled data."""
        labels = self.manifest["labels"]
        if not labels or labels[0] is None:
            return None
        return np.repeat(np.asarray(labels, dtype=np.int64), self.manifest["vectors_per_image"])

    def origin(self) -> dict:
        keys = ("backbone", "layer", "input_size", "pooling", "fingerprint")
        return {k: self.manifest[k] for k in keys}
