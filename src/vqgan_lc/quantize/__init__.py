"""Quantizers behind one interface, chosen by a string mode (`QuantizerConfig.kind`)."""
from __future__ import annotations

import torch

from .base import Quantizer, QuantizerOutput
from .config import QuantizerConfig
from .ema import EMAQuantizer
from .ema_restart import RestartEMAQuantizer
from .l2norm import L2NormQuantizer
from .lc import LCQuantizer
from .simvq import SimVQQuantizer
from .vq import LearnedQuantizer

# kinds whose class is not the default learned codebook (`vq`, `fc`)
_CLASSES = {"ema": EMAQuantizer, "ema-restart": RestartEMAQuantizer, "l2": L2NormQuantizer, "simvq": SimVQQuantizer}


def build_quantizer(config: QuantizerConfig, codebook: torch.Tensor | None = None,
                    metadata: dict | None = None) -> Quantizer:
    """`lc` takes the frozen (N, C) codebook tensor (and its file's `metadata`, kept as
    provenance); the other kinds learn theirs."""
    config.validate()
    if config.kind == "lc":
        return LCQuantizer(config, codebook, metadata)
    if codebook is not None:
        raise ValueError(f"a codebook tensor is only taken by kind='lc', not {config.kind!r}")
    return _CLASSES.get(config.kind, LearnedQuantizer)(config)


__all__ = ["Quantizer", "QuantizerOutput", "QuantizerConfig", "LCQuantizer", "LearnedQuantizer",
           "EMAQuantizer", "RestartEMAQuantizer", "L2NormQuantizer", "SimVQQuantizer", "build_quantizer"]
