"""VQGAN-LC: image tokenizers with a frozen, k-means-initialised codebook of 100,000+ entries,
and the generators that run on their tokens and latents.

Importing the package is cheap (no torch, no faiss): the names below load on first use.
"""

__version__ = "0.2.0"

_LAZY = {
    "QuantizerConfig": "vqgan_lc.quantize",
    "build_quantizer": "vqgan_lc.quantize",
    "TokenizerConfig": "vqgan_lc.tokenizer",
    "VQModel": "vqgan_lc.tokenizer",
    "get_preset": "vqgan_lc.tokenizer",
    "load_pretrained": "vqgan_lc.pretrained",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vqgan_lc' has no attribute {name!r}")
