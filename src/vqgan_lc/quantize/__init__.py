"""Quantizers behind one interface, chosen by a string mode (`QuantizerConfig.kind`)."""
from __future__ import annotations

import torch

from .base import Quantizer, QuantizerOutput
from .config import QuantizerConfig
from .ema import EMAQuantizer
from .lc import LCQuantizer
from .vq import LearnedQuantizer


def build_quantizer(config: QuantizerConfig, codebook: torch.Tensor | None = None,
                    metadata: dict | None = None) -> Quantizer:
    """`lc` takes the frozen (N, C) codebook tensor (and its file's `metadata`, kept as
    provenance); the other kinds learn theirs."""
    config.validate()
    if config.kind == "lc":
        return LCQuantizer(config, codebook, metadata)
    if codebook is not None:
        raise ValueError(f"a codebook tensor is only taken by kind='lc', not {config.kind!r}")
    if config.kind == "ema":
        return EMAQuantizer(config)
    return LearnedQuantizer(config)


__all__ = ["Quantizer", "QuantizerOutput", "QuantizerConfig", "LCQuantizer", "LearnedQuantizer",
           "EMAQuantizer", "build_quantizer"]
