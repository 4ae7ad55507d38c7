"""CLIP's ModifiedResNet-50 image tower (the paper's Table 6 "CLIP ResNet-50" backbone).

Written here because open_clip needs torchvision, which does not import beside the CPU
torch wheel. The layout follows OpenAI's ModifiedResNet so their state dicts load key for
key: a three-conv stem with average pooling, Bottleneck blocks that downsample with an
average pool before the last 1x1 conv (anti-aliased strides), layers (3, 4, 6, 3), width 64.

The attention-pooling head is not built: it collapses the grid to one vector, while the
codebook needs patch features. Features are the spatial map of `layer4` (default: 2048
channels, stride 32, a 7x7 grid at 224 px) or `layer3` (1024 channels, a 14x14 grid).
Pooling 7x7 to 4x4 uses adaptive average pooling (overlapping bins).

Weights: OpenAI's `RN50.pt` (a TorchScript archive) or an open_clip / plain state dict,
given as `weights` (`--backbone-weights FILE`) or through $VQGAN_LC_CLIP_RN50, resolved by
`vqgan_lc.files.require_weights` like every other weight file.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vqgan_lc.backbones.clip import to_clip_pixels
from vqgan_lc.backbones.base import FeatureBackbone
from vqgan_lc.files import require_weights

RN50_ENV = "VQGAN_LC_CLIP_RN50"
RN50_LAYERS = (3, 4, 6, 3)
RN50_CHANNELS = {"layer3": 1024, "layer4": 2048}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        # Stride by average pooling instead of a strided conv (CLIP's anti-aliasing change).
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class ModifiedResNet(nn.Module):
    """CLIP's image ResNet without the attention-pooling head."""

    def __init__(self, layers=RN50_LAYERS, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, layer: str = "layer4") -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x if layer == "layer3" else self.layer4(x)


class ClipResNetBackbone(FeatureBackbone):
    def __init__(self, model: ModifiedResNet, layer: str = "layer4", input_size: int = 224):
        if layer not in RN50_CHANNELS:
            raise ValueError(f"clip-rn50: unknown layer {layer!r}; choose from {sorted(RN50_CHANNELS)}")
        super().__init__("clip-rn50", RN50_CHANNELS[layer], input_size, layer)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_clip_pixels(images, self.input_size), self.layer)


def _read_state(path: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # OpenAI ships RN50.pt as a TorchScript archive
        state = torch.jit.load(path, map_location="cpu").state_dict()
    state = state.get("state_dict", state)
    prefix = "visual." if any(k.startswith("visual.") for k in state) else ""
    # The attention-pooling head is not part of the feature model.
    return {k[len(prefix):]: v.float() for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith("attnpool.")}


def load_clip_rn50_weights(model: ModifiedResNet, path: str) -> None:
    path = str(require_weights(None, "clip-rn50 weights", path=path))
    try:
        missing, unexpected = model.load_state_dict(_read_state(path), strict=False)
    except RuntimeError as err:  # shape mismatches: report the first one on one line
        detail = " ".join(str(err).split("\n")[1:2]).strip()
        raise RuntimeError(f"{path} is not a CLIP RN50 checkpoint ({detail})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"{path} is not a CLIP RN50 checkpoint (missing {missing[:2]}, unexpected {unexpected[:2]})")


def build_clip_rn50(weights: str | None = None, *, pretrained: bool = True, layer: str = "layer4",
                    input_size: int = 224) -> ClipResNetBackbone:
    model = ModifiedResNet()
    if pretrained:
        # no standard file name or download for RN50: only the path or the environment variable
        path = require_weights(None, "clip-rn50 weights", path=weights, env=RN50_ENV, hub_cache=False, option=None,
                               place="pass --backbone-weights FILE (OpenAI's RN50.pt or an open_clip RN50 state dict)")
        load_clip_rn50_weights(model, str(path))
    return ClipResNetBackbone(model.eval(), layer, input_size)
