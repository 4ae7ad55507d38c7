"""The base classes every feature backbone derives from, apart from the registry that names
them, so that a backbone module and the registry can both import them.

A `FeatureBackbone` maps RGB images in [-1, 1], shape (B, 3, H, W), to a patch-feature map
(B, C, h, w) and carries `.name`, `.dim` (C), `.input_size` and `.layer`, so a feature file
can say exactly what it holds.
"""
from __future__ import annotations

import torch
from torch import nn


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
