"""The Inception-v3 network behind FID, in the layout of pytorch-fid's `pt_inception-2015-12-05` weights.

FID's Inception is the 2015 TensorFlow graph, which differs from torchvision's Inception-v3
in three places, reproduced here: average pools ignore padding (count_include_pad=False),
the last block max-pools instead of average-pooling its pool branch, and the classifier
has 1008 outputs. The module names match pytorch-fid's state dict key for key, so
`pt_inception-2015-12-05-6726825d.pth` loads strictly.

Weights are looked up like every other weight file (`vqgan_lc.files.require_weights`: path
argument, $VQGAN_LC_INCEPTION, torch hub cache) and downloaded only with `--download`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqgan_lc.files import find_weights, require_weights, torch_hub_checkpoints

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "VQGAN_LC_INCEPTION"
FID_INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008  # outputs of the 2015 graph's classifier
# sFID's features: the TF graph's `mixed_6/conv` (the 1x1 branch of Mixed_6d, after its ReLU),
# first SPATIAL_CHANNELS channels of the 17x17 map, flattened in TF's (h, w, c) order
SPATIAL_CHANNELS = 7
SPATIAL_SIDE = 17
SPATIAL_DIM = SPATIAL_SIDE * SPATIAL_SIDE * SPATIAL_CHANNELS  # 2,023


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs, 1x1 branch first (sFID reads Mixed_6d's)."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return [self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """`pool="avg"` for Mixed_7b, `pool="max"` for Mixed_7c (a quirk of the TF graph FID uses)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images (B,3,H,W) in [-1, 1] (FID uses 299x299) -> (B, 2048) pool3 features.

    `features(x)` returns, from the same single pass, what the ADM evaluation suite reads from
    the TF graph: "pool" (B, 2048) = `pool_3`; "spatial" (B, 2023) = `mixed_6/conv` (Mixed_6d's
    1x1 branch after its ReLU, 192 x 17 x 17 at 299 px), channels 0..6, flattened as TF's NHWC
    (h, w, c) so that its mean and covariance line up with the suite's `mu_s` / `sigma_s`; and
    "logits" (B, 1008) = pool @ fc.weight.T, the graph's `softmax/logits/MatMul`, which the suite
    feeds to its softmax for the Inception Score (the classifier's bias is not added there).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)  # its weight gives the Inception Score's logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, spatial=False)[0]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"pool": (B, 2048), "spatial": (B, 2023), "logits": (B, 1008)} from one forward pass."""
        pool, spatial = self._run(x, spatial=True)
        if spatial.shape[-2:] != (SPATIAL_SIDE, SPATIAL_SIDE):
            raise ValueError(f"FIDInceptionV3.features needs {FID_INPUT_SIZE}x{FID_INPUT_SIZE} inputs (the 17x17 map "
                             f"of sFID), got {tuple(x.shape[-2:])}")
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], SPATIAL_DIM)
        return {"pool": pool, "spatial": spatial, "logits": pool @ self.fc.weight.T}

    def _run(self, x: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        mixed_6d_1x1 = None
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            block = getattr(self, f"Mixed_{name}")
            if spatial and name == "6d":
                parts = block.branches(x)
                mixed_6d_1x1 = parts[0]
                x = torch.cat(parts, 1)
            else:
                x = block(x)
        return x.mean(dim=(2, 3)), mixed_6d_1x1


def inception_weights_path(path: str | os.PathLike | None = None) -> Path | None:
    """`path` if given (None when absent), else $VQGAN_LC_INCEPTION when set, else torch hub's cache."""
    return find_weights(INCEPTION_FILENAME, path=path, env=INCEPTION_ENV)


def available(path: str | os.PathLike | None = None, *, download: bool | None = None) -> bool:
    """True when the FID Inception weights are on disk, or will be fetched on first use because
    downloads are enabled (so `fid="auto"` computes FID after `--download`)."""
    from vqgan_lc.files import downloads_enabled

    if inception_weights_path(path) is not None:
        return True
    explicit = path or os.environ.get(INCEPTION_ENV)
    return not explicit and downloads_enabled(download)


def load_fid_inception(path: str | os.PathLike | None = None, *, download: bool | None = None) -> FIDInceptionV3:
    """The FID Inception (eval, frozen) from pytorch-fid's weight file."""
    file = require_weights(INCEPTION_FILENAME, "FID Inception weights", path=path, env=INCEPTION_ENV,
                           option="its path", place=f"put pytorch-fid's {INCEPTION_FILENAME} in {torch_hub_checkpoints()}",
                           download=download)
    state = torch.load(file, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # skip a random init that the checkpoint overwrites
        model = FIDInceptionV3()
    # the file predates BatchNorm's batch counter; the counter plays no part in eval mode
    for key in model.state_dict():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, torch.zeros((), dtype=torch.long))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{file} is not pytorch-fid's Inception state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval().requires_grad_(False)
