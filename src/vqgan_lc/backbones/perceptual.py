"""Perceptual distances between image batches: `lpips-vgg` (LPIPS v0.1) and `perceptual-lite0`.

Both follow the LPIPS recipe: deep features of both images at several stages, each feature
vector unit-normalised over channels, squared difference, a per-channel weighting, spatial
mean, sum over stages. They differ in the network and the weighting:

- `lpips-vgg`: VGG16 (torchvision ImageNet weights) with the learned linear layers of the
  `lpips` package v0.1 (`vgg.pth`). This is the paper's perceptual loss and the published
  LPIPS metric. Both weight files are looked up on disk (`vqgan_lc.files.require_weights`)
  and fetched only when downloads are enabled (`--download`, VQGAN_LC_DOWNLOAD=1).
- `perceptual-lite0`: the EfficientNet-Lite0 shipped with the project, taps stride4, stride8,
  stride16, stride32. No learned linear layers exist for this network, so every channel
  weighs the same (channel mean). Always available offline; its values are NOT comparable
  with published LPIPS numbers.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqgan_lc.backbones.efficientnet_lite0 import load_efficientnet_lite0, to_lite0_input
from vqgan_lc.backbones.vgg import LPIPS_CHANNELS, VGG16_ENV, VGG16_FILENAME, load_vgg16_features
from vqgan_lc.files import LPIPS_VGG_CACHE_NAME, downloads_enabled, find_weights, require_weights

PERCEPTUAL_NAMES = ("perceptual-lite0", "lpips-vgg")
LITE0_TAPS = ("stride4", "stride8", "stride16", "stride32")
LPIPS_ENV = "VQGAN_LC_LPIPS"
# LPIPS v0.1's `vgg.pth` inside the packages that ship it (found without importing them)
LPIPS_PACKAGE_FILES = (("lpips", "weights/v0.1/vgg.pth"), ("torchmetrics", "functional/image/lpips_models/vgg.pth"))
# LPIPS v0.1 input scaling: images in [-1, 1] are shifted/scaled per channel before VGG
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide every spatial feature vector (dim 1) by its L2 norm, as LPIPS does."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """Frozen perceptual distance; `forward(x, y)` -> (B,) for images (B,3,H,W) in [-1, 1].

    Gradients flow to the inputs, never to the network. The network stays in eval mode
    even when a parent module calls `.train()` (its BatchNorm statistics are fixed).
    """

    name: str

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects two (B,3,H,W) batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        # one pass over both batches: the network is in eval mode, so they do not interact
        feats = self.stage_features(torch.cat([x, y]))
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for i, f in enumerate(feats):
            # normalise and compare in float32 even under autocast: the distances are small
            fx, fy = unit_normalize(f.float()).chunk(2)
            total = total + self.weigh_channels(i, (fx - fy).pow(2)).mean(dim=(1, 2))
        return total

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def weigh_channels(self, stage: int, sq_diff: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) squared differences -> (B,h,w)."""
        raise NotImplementedError


class Lite0Perceptual(PerceptualLoss):
    """`perceptual-lite0`: LPIPS-style distance on EfficientNet-Lite0 features, equal channel weights.

    Lite0's fixed TF-style padding needs sides that are multiples of 32, so other sizes are
    resized (bilinear) up to the next multiple of 32 before the network; resizing rather
    than padding keeps border content from being averaged with padding.
    """

    name = "perceptual-lite0"

    def __init__(self, weights: str | None = None):
        super().__init__()
        self.net = load_efficientnet_lite0(weights)
        self.eval()

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        th, tw = max(32, -(-h // 32) * 32), max(32, -(-w // 32) * 32)
        if (th, tw) != (h, w):
            images = F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False)
        maps = self.net.features(to_lite0_input(images), taps=LITE0_TAPS)
        return [maps[t] for t in LITE0_TAPS]

    def weigh_channels(self, stage: int, sq_diff: torch.Tensor) -> torch.Tensor:
        return sq_diff.mean(dim=1)


class LpipsVgg(PerceptualLoss):
    """`lpips-vgg`: LPIPS v0.1 with VGG16, i.e. the published metric (given the published weights)."""

    name = "lpips-vgg"

    def __init__(self, vgg_weights: str | None = None, lpips_weights: str | None = None):
        super().__init__()
        self.net = load_vgg16_features(vgg_weights)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.lins.load_state_dict(read_lpips_linear_layers(lpips_linear_path(lpips_weights)))
        self.lins.requires_grad_(False)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.taps((images - self.shift) / self.scale)

    def weigh_channels(self, stage: int, sq_diff: torch.Tensor) -> torch.Tensor:
        # a 1x1 conv without bias is a weighted channel sum; written out so autocast leaves it in float32
        return (sq_diff * self.lins[stage].weight.float().view(1, -1, 1, 1)).sum(dim=1)


def lpips_linear_path(path: str | os.PathLike | None = None, *, download: bool | None = None) -> Path:
    """LPIPS v0.1 `vgg.pth`: `path` if given, else $VQGAN_LC_LPIPS when set, else the copy in the
    installed `lpips` or `torchmetrics` package, else torch.hub's cache (fetched there when
    downloads are enabled); one-line WeightsNotFoundError otherwise."""
    return require_weights(LPIPS_VGG_CACHE_NAME, "LPIPS linear layers (v0.1 vgg.pth)", path=path, env=LPIPS_ENV,
                           packages=LPIPS_PACKAGE_FILES, option="lpips_weights=PATH",
                           # not `pip install lpips`: it pulls in torchvision, which replaces a CPU torch
                           place="pip install torchmetrics (its wheel ships the file)", download=download)


def read_lpips_linear_layers(path: Path) -> dict[str, torch.Tensor]:
    """`lin{i}.model.1.weight` (saved with dropout) or `lin{i}.model.0.weight` -> ModuleList keys `{i}.weight`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for i, channels in enumerate(LPIPS_CHANNELS):
        key = next((k for k in (f"lin{i}.model.1.weight", f"lin{i}.model.0.weight") if k in state), None)
        if key is None or tuple(state[key].shape) != (1, channels, 1, 1):
            raise RuntimeError(f"{path} is not an LPIPS v0.1 VGG file: lin{i} weight of shape (1,{channels},1,1) missing")
        out[f"{i}.weight"] = state[key]
    return out


def lpips_vgg_available(vgg_weights: str | None = None, lpips_weights: str | None = None, *,
                        download: bool | None = None) -> bool:
    """True when both weight files of `lpips-vgg` are on disk, or will be fetched on first use
    because downloads are enabled (so `perceptual="auto"` picks LPIPS after `--download`)."""
    def ready(filename: str, path: str | None, env: str, **where) -> bool:
        if find_weights(filename, path=path, env=env, **where) is not None:
            return True
        return not (path or os.environ.get(env)) and downloads_enabled(download)

    return (ready(VGG16_FILENAME, vgg_weights, VGG16_ENV)
            and ready(LPIPS_VGG_CACHE_NAME, lpips_weights, LPIPS_ENV, packages=LPIPS_PACKAGE_FILES))


def build_perceptual(
    name: str = "perceptual-lite0", *, vgg_weights: str | None = None, lpips_weights: str | None = None
) -> PerceptualLoss:
    """The named perceptual distance, frozen and in eval mode."""
    if name == "perceptual-lite0":
        return Lite0Perceptual()
    if name == "lpips-vgg":
        return LpipsVgg(vgg_weights, lpips_weights)
    raise ValueError(f"unknown perceptual loss {name!r}; choose from {PERCEPTUAL_NAMES}")
