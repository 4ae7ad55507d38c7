"""Codebook initialisation: backbone features -> k-means -> a frozen codebook file.

Pipeline: `extract_features` (dataset scale: sharded, resumable, through `vqgan_lc.data.cache`) or `build_codebook`
(in-memory images) -> `build_codebook_from_vectors` (per-class / global / random-select /
gaussian) -> `save_codebook`, read back with `load_codebook` and handed to the LC quantizer as a tensor.

The names below load on first use, so that `vqgan_lc.codebook.config` (the command line's
flags) is read without torch.
"""
from vqgan_lc import lazy_attributes

_LAZY = {
    "CODEBOOK_MODES": "vqgan_lc.codebook.config",
    "CodebookBuildConfig": "vqgan_lc.codebook.config",
    "build_codebook": "vqgan_lc.codebook.build",
    "build_codebook_from_vectors": "vqgan_lc.codebook.build",
    "extract_in_memory": "vqgan_lc.codebook.build",
    "Exemplars": "vqgan_lc.codebook.exemplars",
    "exemplars_path": "vqgan_lc.codebook.exemplars",
    "load_exemplars": "vqgan_lc.codebook.exemplars",
    "FeatureStore": "vqgan_lc.codebook.feature_store",
    "dataset_fingerprint": "vqgan_lc.codebook.feature_store",
    "ExtractConfig": "vqgan_lc.codebook.features",
    "extract_features": "vqgan_lc.codebook.features",
    "pool_features": "vqgan_lc.codebook.features",
    "Codebook": "vqgan_lc.codebook.io",
    "describe_codebook": "vqgan_lc.codebook.io",
    "load_codebook": "vqgan_lc.codebook.io",
    "save_codebook": "vqgan_lc.codebook.io",
    "KMeansResult": "vqgan_lc.codebook.kmeans",
    "grouped_kmeans": "vqgan_lc.codebook.kmeans",
    "kmeans": "vqgan_lc.codebook.kmeans",
    "size_histogram": "vqgan_lc.codebook.kmeans",
    "two_level_kmeans": "vqgan_lc.codebook.two_level",
    "ShardedRows": "vqgan_lc.data.cache",  # the reader behind FeatureStore.vectors
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
