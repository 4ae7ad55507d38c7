"""VQGAN-LC: image tokenizers with a frozen, k-means-initialised codebook of 100,000+ entries."""

__version__ = "0.1.0"

from . import _faiss  # noqa: E402,F401  (first: chooses faiss's BLAS kernel before faiss loads)

from .quantize import QuantizerConfig, build_quantizer  # noqa: E402
from .tokenizer import TokenizerConfig, VQModel, get_preset  # noqa: E402

__all__ = ["QuantizerConfig", "TokenizerConfig", "VQModel", "build_quantizer", "get_preset"]
