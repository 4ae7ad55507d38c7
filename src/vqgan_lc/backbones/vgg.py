"""VGG16 convolutional features in torchvision's state-dict layout, without torchvision.

Only the `features` stack is built (13 convs, ReLUs and 5 max-pools at the same indices as
torchvision's `vgg16().features`), so the ImageNet checkpoint `vgg16-397923af.pth` loads
key for key (`features.0.weight` ... `features.28.bias`); its classifier keys are ignored.
LPIPS reads the five ReLU outputs that end each resolution: relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3 (64, 128, 256, 512, 512 channels).

torchvision cannot be imported beside the CPU torch wheel this project targets, so the file
is looked up like every other weight file (`vqgan_lc.files.require_weights`: an explicit
path, $VQGAN_LC_VGG16, torch.hub's checkpoint cache) and fetched only with `--download`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vqgan_lc.files import require_weights, torch_hub_checkpoints

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_ENV = "VQGAN_LC_VGG16"
# conv output channels per block; "M" is a 2x2 max-pool, as in torchvision's config "D"
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# index (in `features`) of the ReLU that ends each LPIPS stage
LPIPS_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """`features` of torchvision's VGG16; `taps(x)` returns the five LPIPS stage outputs."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                cin = item
        self.features = nn.Sequential(*layers)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input already normalised the way the caller's weights expect; stops after relu5_3."""
        wanted = set(LPIPS_TAPS.values())
        out = []
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def vgg16_weights_path(path: str | os.PathLike | None = None, *, download: bool | None = None) -> Path:
    """torchvision's VGG16 file: `path` if given, else $VQGAN_LC_VGG16, else torch.hub's cache
    (downloaded there when downloads are enabled); one-line WeightsNotFoundError otherwise."""
    return require_weights(VGG16_FILENAME, "VGG16 weights", path=path, env=VGG16_ENV, option="vgg_weights=PATH",
                           place=f"put torchvision's {VGG16_FILENAME} in {torch_hub_checkpoints()}",
                           download=download)


def load_vgg16_features(path: str | os.PathLike | None = None) -> VGG16Features:
    """ImageNet VGG16 features (eval mode, frozen) from a local torchvision checkpoint."""
    file = vgg16_weights_path(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    with torch.device("meta"):  # skip a random init that the checkpoint overwrites
        model = VGG16Features()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{file} is not a torchvision VGG16 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval().requires_grad_(False)
