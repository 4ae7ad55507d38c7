"""Import faiss with a BLAS kernel that suits the CPU.

The faiss-cpu wheels bundle an OpenBLAS (0.3.15) that does not recognise recent Intel
CPUs (Sapphire Rapids and later) and falls back to its generic SSE3 kernels: flat
nearest-centroid search then runs 2-3x slower than it should. OpenBLAS reads
OPENBLAS_CORETYPE once, when the library loads, so `configure_openblas()` must run before
the first `import faiss` of the process, and it leaves any value the user chose alone:
AVX-512 CPUs get the SkylakeX kernels, AVX2 CPUs the Haswell ones. numpy and torch load
their own BLAS and are unaffected. This file imports nothing from the package, so a
script can run it first (`runpy.run_path`); `vqgan_lc/__init__.py` imports it before anything
else loads faiss.
"""
from __future__ import annotations

import logging
import os
import sys


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
    """Set OPENBLAS_CORETYPE for faiss's OpenBLAS if it is not set yet; returns the value in force."""
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


configure_openblas()
import faiss  # noqa: E402  (after the environment is set)

__all__ = ["configure_openblas", "faiss"]
