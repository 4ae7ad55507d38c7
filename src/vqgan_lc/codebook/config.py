"""The settings of `vqgan-lc codebook build`, apart from the code that runs it, so that the
command line can build its flags from them without loading torch."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import Config

CODEBOOK_MODES = ("per-class", "global", "random-select", "gaussian")


@dataclass
class CodebookBuildConfig(Config):
    renamed_fields = {"size": "codebook_size"}
    data: str = ""                     # image folder (class sub-folders -> labels) or a .txt list
    codebook_size: int = 16_384        # entries N
    out: str = "codebook.safetensors"  # codebook file to write (.safetensors)
    backbone: str = "efficientnet-lite0"  # feature backbone (efficientnet-lite0, clip-vit-l14, ...)
    backbone_weights: str | None = None  # local weights file or folder for the backbone
    input_size: int | None = None      # image size fed to the backbone (default: the backbone's own, 256 for Lite0)
    mode: str = "auto"                 # "auto" (per-class with labels, else global) or one of CODEBOOK_MODES
    pool: int | None = 4               # average-pool each feature grid to pool x pool vectors (paper: 4); None keeps the grid
    iters: int = 20                    # k-means iterations
    seed: int = 0
    init: str = "random"               # k-means seeding: "random" | "k-means++"
    assign: str = "auto"               # nearest-centroid search inside k-means: "auto" | "exact" | "ivf"
    batch_size: int = 32
    workers: int = 2                   # image-decoding processes
    shard_mb: float = 256              # size of each feature shard file, in MB
    cache_dir: str | None = None       # feature cache root (default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc)
    features_dir: str | None = None    # exact folder for this dataset's features (overrides the cache)
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    progress: bool = True              # a progress bar while features are extracted
    # the K feature vectors nearest to each entry (image, grid cell, class), recorded in
    # CODEBOOK.exemplars.npz beside the codebook for `vqgan-lc app`; 0: none
    exemplars: int = 8

    def check(self) -> None:
        if not self.data:
            raise ValueError("codebook build needs the image folder or list (data)")
        if self.exemplars < 0:
            raise ValueError(f"exemplars per entry must be >= 0 (0: record none), got {self.exemplars}")
        for name in ("codebook_size", "pool", "iters", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: decode in this process), got {self.workers}")
        if self.mode not in ("auto", *CODEBOOK_MODES):
            raise ValueError(f"mode must be auto or one of {', '.join(CODEBOOK_MODES)}, got {self.mode!r}")
        if self.init not in ("random", "k-means++") or self.assign not in ("auto", "exact", "ivf"):
            raise ValueError(f"init must be random|k-means++ and assign auto|exact|ivf, got {self.init}, {self.assign}")
        if os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is a folder; give the codebook file's path (e.g. {self.out}/codebook.safetensors)")
