"""Typed configuration shared by every quantizer."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config

KINDS = ("lc", "vq", "fc", "ema", "ema-restart", "l2", "simvq")
PROJECTORS = ("linear", "mlp", "none")
GRADIENTS = ("straight-through", "rotation")


@dataclass
class QuantizerConfig(Config):
    kind: str = "lc"               # "lc" (VQGAN-LC) | "vq" (VQGAN) | "fc" (VQGAN-FC) | "ema" (VQGAN-EMA)
    #                                | "ema-restart" (EMA + data start + dead-code restarts, ema_restart.py)
    #                                | "l2" (LlamaGen's l2-normalised codes, l2norm.py) | "simvq" (simvq.py)
    codebook_size: int = 100_000   # N entries
    dim: int = 8                   # D': latent width the decoder sees (8 for f16, 4 for f8 in the paper)
    # --- lc only ---
    codebook_dim: int = 768        # C: width of the frozen entries (CLIP ViT-L/14 features: 768)
    projector: str = "linear"      # "linear" (paper) | "mlp" (C->256->ReLU->D', in the reference code) | "none"
    projector_hidden: int = 256
    train_codebook: bool = False   # paper's ablation: trainable codebook + projector (99.1% / rFID 2.65)
    # Centre the given codebook and scale it to unit RMS norm before storing it. The linear
    # projector absorbs any shift and uniform scale, so the model family is unchanged; only the
    # start is better conditioned: projected entries then begin at the latents' scale (N(0, D'^-0.5)
    # weights give ~unit-norm entries) whatever the backbone's feature magnitudes (EfficientNet
    # features have norms ~65, so raw entries would start far outside the latent cloud and all
    # latents would snap to one entry).
    standardize_codebook: bool = True
    # --- fc only ---
    l2_normalize: bool = False     # ViT-VQGAN's factorized codes with l2-normalised (cosine) lookup
    # --- ema only ---
    ema_decay: float = 0.99
    ema_eps: float = 1e-5          # Laplace smoothing of cluster sizes
    # --- ema-restart only: an entry whose EMA cluster size (assignments per step) falls below
    # this is re-seeded from a random latent of the batch (Jukebox's threshold: 1.0) ---
    restart_threshold: float = 1.0
    # --- how the decoder's gradient crosses the quantizer (every kind) ---
    # "straight-through": the gradient at the entry is copied to z (VQ-VAE); "rotation": the
    # rotation trick (Fifty et al. 2024, arXiv 2410.06424): the entry is written as a fixed
    # rotation and scaling of z, so the gradient reaching z is rotated and scaled the same way and
    # carries where z sits relative to its entry. Forward values are the same in both.
    gradient: str = "straight-through"
    # --- loss: alpha*||sg(zq)-z||^2 + beta*||zq-sg(z)||^2 (paper: alpha 1.0, beta 0.33) ---
    alpha: float = 1.0
    beta: float = 0.33
    # --- nearest-neighbour search ---
    memory_budget_mb: float = 256.0  # transient memory bound of the search, whatever tokens x N
    search_backend: str = "auto"     # "auto" | "torch" | "kdtree" | "faiss" (see quantize/search.py)

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"quantizer kind {self.kind!r} unknown; choose one of {KINDS}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient {self.gradient!r} unknown; choose one of {GRADIENTS}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector {self.projector!r} unknown; choose one of {PROJECTORS}")
        if self.codebook_size < 1 or self.dim < 1 or self.codebook_dim < 1:
            raise ValueError(f"codebook_size, dim and codebook_dim must be positive, got {self.codebook_size}, "
                             f"{self.dim} and {self.codebook_dim}")
        if self.kind == "lc" and self.projector == "none" and self.codebook_dim != self.dim:
            raise ValueError(
                f"an LC codebook without projector needs codebook_dim == dim, got {self.codebook_dim} != {self.dim}"
            )
        if self.kind != "lc" and (self.projector != "linear" or self.train_codebook):
            raise ValueError(f"projector / train_codebook apply to kind='lc' only, not {self.kind!r}")
        if self.l2_normalize and self.kind != "fc":
            raise ValueError("l2_normalize applies to kind='fc' (factorized codes) only")
        from .search import BACKENDS
        if self.search_backend not in BACKENDS:
            raise ValueError(f"search_backend {self.search_backend!r} unknown; choose one of {BACKENDS}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.restart_threshold < 0:
            raise ValueError(f"restart_threshold must be >= 0 (0 turns restarts off), got {self.restart_threshold}")
        if self.memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {self.memory_budget_mb}")
