"""Pretrained feature networks shared by the pipeline (codebook features, perceptual and
Frechet distances). The codebook backbones are reached by name through the registry."""
from vqgan_lc.backbones.registry import (
    FeatureBackbone,
    as_backbone,
    available_backbones,
    build_backbone,
    register_backbone,
    wrap_module,
)

__all__ = [
    "FeatureBackbone",
    "as_backbone",
    "available_backbones",
    "build_backbone",
    "register_backbone",
    "wrap_module",
]
