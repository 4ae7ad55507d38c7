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


def lazy_attributes(module_name: str, names: dict[str, str]):
    """A module `__getattr__` that imports `names[name]` (a module path) on first use and keeps
    the value in the module's globals: how a package exports names without importing them."""

    def __getattr__(name: str):
        if name in names:
            import importlib
            import sys

            value = getattr(importlib.import_module(names[name]), name)
            setattr(sys.modules[module_name], name, value)
            return value
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    return __getattr__


__getattr__ = lazy_attributes(__name__, _LAZY)
