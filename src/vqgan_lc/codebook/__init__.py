"""Codebook initialisation: backbone features -> k-means -> a frozen codebook file.

Pipeline: `extract_features` (dataset scale: sharded, resumable, through `vqgan_lc.data.cache`) or `build_codebook`
(in-memory images) -> `build_codebook_from_vectors` (per-class / global / random-select /
gaussian) -> `save_codebook`, read back by the LC quantizer with `load_codebook`.
"""
from vqgan_lc.codebook.build import (
    CODEBOOK_MODES,
    build_codebook,
    build_codebook_from_vectors,
    extract_in_memory,
)
from vqgan_lc.codebook.exemplars import Exemplars, exemplars_path, load_exemplars
from vqgan_lc.codebook.feature_store import FeatureStore, dataset_fingerprint
from vqgan_lc.codebook.features import ExtractConfig, extract_features, pool_features
from vqgan_lc.codebook.io import Codebook, describe_codebook, load_codebook, save_codebook
from vqgan_lc.codebook.kmeans import (
    KMeansResult,
    grouped_kmeans,
    kmeans,
    size_histogram,
)
from vqgan_lc.codebook.two_level import two_level_kmeans
from vqgan_lc.data.cache import ShardedRows  # the reader behind FeatureStore.vectors

__all__ = [
    "CODEBOOK_MODES",
    "Codebook",
    "Exemplars",
    "ExtractConfig",
    "FeatureStore",
    "KMeansResult",
    "ShardedRows",
    "build_codebook",
    "build_codebook_from_vectors",
    "dataset_fingerprint",
    "exemplars_path",
    "describe_codebook",
    "extract_features",
    "extract_in_memory",
    "grouped_kmeans",
    "kmeans",
    "load_codebook",
    "load_exemplars",
    "pool_features",
    "save_codebook",
    "size_histogram",
    "two_level_kmeans",
]
