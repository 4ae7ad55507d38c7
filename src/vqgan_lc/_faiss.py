"""faiss, loaded on first use, with a BLAS kernel that suits the CPU.

Only k-means (codebook building) and the "faiss" search backend need faiss, so nothing imports
it until one of them runs: `import vqgan_lc.quantize` (and so `VQModel`) stays free of it and
of its import time. `load_faiss()` returns the module, or None where faiss-cpu is not
installed; `require_faiss(what)` raises one line instead.

The faiss-cpu wheels bundle an OpenBLAS (0.3.15) that does not recognise recent Intel CPUs
(Sapphire Rapids and later) and falls back to its generic SSE3 kernels: flat nearest-centroid
search then runs 2-3x slower than it should. OpenBLAS reads OPENBLAS_CORETYPE once, when the
library loads, so `load_faiss()` sets it right before the first `import faiss` of the process:
AVX-512 CPUs get the SkylakeX kernels, AVX2 CPUs the Haswell ones. It does so only when
OPENBLAS_CORETYPE is unset (a value the user chose is left alone) and not at all with
VQGAN_LC_OPENBLAS_CORETYPE=off. Importing this module changes nothing in the environment.
numpy and torch have loaded their own BLAS by then and are unaffected; processes started
later inherit the variable, which names a kernel their CPU supports. This file imports
nothing from the package, so a script that wants faiss itself can take it from `load_faiss`.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

OPT_OUT_ENV = "VQGAN_LC_OPENBLAS_CORETYPE"  # "off": never set OPENBLAS_CORETYPE
_NOT_LOADED = object()
_module = _NOT_LOADED
_lock = threading.Lock()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def configure_openblas() -> str | None:
    """Set OPENBLAS_CORETYPE for faiss's OpenBLAS if it is not set yet (and the opt-out is not
    in force); returns the value in force. Called by `load_faiss` just before faiss loads."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() == "off":
        return os.environ.get("OPENBLAS_CORETYPE")
    if "OPENBLAS_CORETYPE" not in os.environ:
        if "faiss" in sys.modules:
            logging.getLogger(__name__).debug("faiss was imported before its OpenBLAS kernel could be chosen")
            return None
        flags = _cpu_flags()
        if "avx512f" in flags:
            os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
        elif "avx2" in flags:
            os.environ["OPENBLAS_CORETYPE"] = "HASWELL"
    return os.environ.get("OPENBLAS_CORETYPE")


def load_faiss():
    """The faiss module (imported on the first call, after `configure_openblas`), or None when
    faiss cannot be imported."""
    global _module
    if _module is _NOT_LOADED:
        with _lock:  # k-means runs groups on a thread pool; the environment is set once
            if _module is _NOT_LOADED:
                configure_openblas()
                try:
                    import faiss
                except ImportError as err:
                    logging.getLogger(__name__).debug("faiss is not importable: %s", err)
                    faiss = None
                _module = faiss
    return _module


def require_faiss(what: str):
    """The faiss module, or one line saying that `what` needs it and how to install it."""
    module = load_faiss()
    if module is None:
        raise RuntimeError(f"{what} needs faiss, which is not importable: pip install faiss-cpu")
    return module


__all__ = ["OPT_OUT_ENV", "configure_openblas", "load_faiss", "require_faiss"]
