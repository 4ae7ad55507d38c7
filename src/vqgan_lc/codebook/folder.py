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

from .. import distributed
from ..files import cache_root
from .config import CodebookBuildConfig  # also importable from here, as before

log = logging.getLogger(__name__)


def features_folder(config: CodebookBuildConfig, records, backbone) -> str:
    from .feature_store import dataset_fingerprint, features_key

    if config.features_dir:
        return config.features_dir
    origin = {**backbone.describe(),
              "weights": os.path.abspath(config.backbone_weights) if config.backbone_weights else None}
    root = cache_root(config.cache_dir)
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
    vectors, info = build_codebook_from_vectors(store.vectors, labels, config.codebook_size, mode, config.seed,
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
        print(f"codebook: {config.codebook_size} x {vectors.shape[1]} ({mode}) from {info['num_vectors']} vectors of "
              f"{store.num_images} images in {time.time() - started:.1f} s{inertia} -> {config.out}")
        if "cluster_size_histogram" in info:
            bins = "  ".join(f"{lo}-{hi}:{count}" for lo, hi, count in info["cluster_size_histogram"] if count)
            print(f"cluster sizes (vectors per entry: count): {bins}")
    return Codebook(vectors=vectors, metadata=metadata)
