"""A codebook file from an image folder: cached features -> k-means -> `.safetensors`.

What `vqgan-lc codebook build` runs. Features are cached under `cache_dir` in a folder keyed
by the dataset's fingerprint + backbone + layer + pooling, so a second build with another size
or mode skips extraction. Under `torchrun`, every rank extracts its slice and rank 0 runs
k-means and writes the file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from .. import distributed
from ..config import Config
from .build import CODEBOOK_MODES

log = logging.getLogger(__name__)

DEFAULT_CACHE = os.path.join("~", ".cache", "vqgan-lc")


@dataclass
class CodebookBuildConfig(Config):
    data: str = ""                     # image folder (class sub-folders -> labels) or a .txt list
    size: int = 16_384                 # entries N
    out: str = "codebook.safetensors"
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None
    input_size: int | None = None      # image size fed to the backbone (default: the backbone's own, 256 for Lite0)
    mode: str = "auto"                 # "auto" (per-class with labels, else global) or one of CODEBOOK_MODES
    pool: int | None = 4               # average-pool each feature grid to pool x pool vectors (paper: 4); None keeps the grid
    iters: int = 20
    seed: int = 0
    init: str = "random"               # k-means seeding: "random" | "k-means++"
    assign: str = "auto"               # nearest-centroid search inside k-means: "auto" | "exact" | "ivf"
    batch_size: int = 32
    workers: int = 2                   # image-decoding processes
    shard_mb: float = 256
    cache_dir: str | None = None       # default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc
    features_dir: str | None = None    # exact folder for this dataset's features (overrides the cache)
    device: str = "auto"
    progress: bool = True
    exemplars: int = 8                 # nearest vectors recorded per entry in the sidecar file; 0: none

    def check(self) -> None:
        if not self.data:
            raise ValueError("codebook build needs the image folder or list (data)")
        if self.exemplars < 0:
            raise ValueError(f"exemplars per entry must be >= 0 (0: record none), got {self.exemplars}")
        if self.size < 1 or (self.pool is not None and self.pool < 1) or self.iters < 1 or self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"size, pool, iters and batch size must be >= 1 (got {self.size}, {self.pool}, "
                             f"{self.iters}, {self.batch_size}) and workers >= 0")
        if self.mode not in ("auto", *CODEBOOK_MODES):
            raise ValueError(f"mode must be auto or one of {', '.join(CODEBOOK_MODES)}, got {self.mode!r}")
        if self.init not in ("random", "k-means++") or self.assign not in ("auto", "exact", "ivf"):
            raise ValueError(f"init must be random|k-means++ and assign auto|exact|ivf, got {self.init}, {self.assign}")
        if os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is a folder; give the codebook file's path (e.g. {self.out}/codebook.safetensors)")


def features_folder(config: CodebookBuildConfig, records, backbone) -> str:
    from .feature_store import dataset_fingerprint, features_key

    if config.features_dir:
        return config.features_dir
    origin = {**backbone.describe(),
              "weights": os.path.abspath(config.backbone_weights) if config.backbone_weights else None}
    root = os.path.expanduser(config.cache_dir or os.environ.get("VQGAN_LC_CACHE", DEFAULT_CACHE))
    return os.path.join(root, "features", features_key(dataset_fingerprint(records), origin, config.pool))


def build_codebook_file(config: CodebookBuildConfig):
    """Extract (or reuse) features, cluster them, write `config.out`; returns the Codebook on rank 0, else None."""
    from ..backbones import build_backbone
    from ..data import list_images
    from ..files import check_writable_dir
    from .build import build_codebook_from_vectors
    from .features import ExtractConfig, extract_features
    from .io import Codebook, save_codebook

    config.validate()
    records = list_images(config.data)  # ImageError is a ValueError: one line from the CLI
    check_writable_dir(os.path.dirname(os.path.abspath(config.out)), "codebook folder")
    env = distributed.init(config.device)
    options = {"input_size": config.input_size} if config.input_size else {}
    backbone = build_backbone(config.backbone, config.backbone_weights, **options)
    folder = features_folder(config, records, backbone)
    extract = ExtractConfig(pool=config.pool, batch_size=config.batch_size, shard_mb=config.shard_mb,
                            num_workers=config.workers, device=str(env.device), progress=config.progress)
    store = extract_features(records, backbone, folder, extract)
    if not env.is_main:
        return None
    labels = store.vector_labels()
    mode = config.mode if config.mode != "auto" else ("per-class" if labels is not None else "global")
    started = time.time()
    vectors, info = build_codebook_from_vectors(store.vectors, labels, config.size, mode, config.seed,
                                                iters=config.iters, assign=config.assign, init=config.init)
    manifest = store.manifest
    metadata = {**store.origin(), **info, "num_images": store.num_images, "num_skipped": manifest["num_skipped"],
                "backbone_weights": config.backbone_weights or "default", "features": folder}
    if mode == "per-class":
        metadata["class_names"] = [manifest["class_names"][c] for c in info["classes"]]
    exemplars = None
    if config.exemplars:
        from .exemplars import exemplars_path, find_exemplars

        searched = time.time()
        paths = [os.path.abspath(records[i].path) for i in store.image_ids]
        exemplars = find_exemplars(store.vectors, vectors, vectors_per_image=store.vectors_per_image,
                                   image_labels=store.labels, info=info, k=config.exemplars,
                                   input_size=backbone.input_size, paths=paths, class_names=manifest["class_names"])
    save_codebook(config.out, vectors, metadata, exemplars=exemplars)
    if exemplars is not None and config.progress:
        print(f"exemplars: the {config.exemplars} nearest vectors of each entry in {time.time() - searched:.1f} s "
              f"-> {exemplars_path(config.out)}")
    if config.progress:
        inertia = f", inertia {info['inertia']:.6g}" if "inertia" in info else ""
        print(f"codebook: {config.size} x {vectors.shape[1]} ({mode}) from {info['num_vectors']} vectors of "
              f"{store.num_images} images in {time.time() - started:.1f} s{inertia} -> {config.out}")
        if "cluster_size_histogram" in info:
            bins = "  ".join(f"{lo}-{hi}:{count}" for lo, hi, count in info["cluster_size_histogram"] if count)
            print(f"cluster sizes (vectors per entry: count): {bins}")
    return Codebook(vectors=vectors, metadata=metadata)
