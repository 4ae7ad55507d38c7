"""Reading extracted features, and the key that names a dataset's feature folder.

A feature folder is a `vqgan_lc.data.cache` folder with one array per image, "vectors"
(pool*pool, C) fp16; `FeatureStore` reads it as one (N, C) matrix of vectors through memory
maps, so a per-class or per-cell k-means loads one group at a time and RAM stays bounded
whatever the dataset size.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from vqgan_lc.data.cache import CacheStore, ShardedRows

VECTORS = "vectors"  # the cache key of the pooled features


def dataset_fingerprint(records) -> str:
    """Names the dataset's content: sha256 over every image's absolute path, label, size and mtime_ns.

    One stat per file and no pixel read, so fingerprinting ImageNet costs seconds, yet the name
    changes when an image is rewritten in place (new size or mtime) or when the same relative
    folder name is used from another working directory. A rewrite that keeps both size and
    mtime_ns (a copy with preserved times of a same-size file) goes unnoticed.
    """
    digest = hashlib.sha256()
    for r in records:
        path = os.path.abspath(r.path)
        try:
            stat = os.stat(path)
            stamp = f"{stat.st_size}\t{stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # listed but gone: extraction will skip it as unreadable
        digest.update(f"{path}\t{'' if r.label is None else r.label}\t{stamp}\n".encode())
    return digest.hexdigest()[:16]


def features_key(fingerprint: str, origin: dict, pool: int | None) -> str:
    """Cache key: same dataset files + backbone (+ layer, size, weights) + pooling -> same features."""
    text = json.dumps({"fingerprint": fingerprint, "origin": origin, "pool": pool}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureStore(CacheStore):
    """A finished extraction folder: `vectors` (N, C) fp16 rows, labels per vector, manifest."""

    @property
    def vectors(self) -> ShardedRows:
        """Every image's pool*pool vectors in turn, images in dataset order."""
        return self.rows(VECTORS, flatten=True)

    @property
    def num_images(self) -> int:
        return self.num_items

    @property
    def vectors_per_image(self) -> int:
        return self.item_shape(VECTORS)[0]

    def vector_labels(self) -> np.ndarray | None:
        """Class label of every vector (images' labels repeated), or None for unlabelled data."""
        labels = self.labels
        return None if labels is None else np.repeat(labels, self.vectors_per_image)

    def origin(self) -> dict:
        """What the features were extracted with: backbone, layer, input size, pooling, dataset."""
        keys = ("backbone", "layer", "input_size", "pooling", "fingerprint")
        return {k: self.header[k] for k in keys}
