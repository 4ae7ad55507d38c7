"""Frechet distances from streamed features: running moments, the distance, the feature nets.

Two feature extractors:
- `Lite0Features` ("FD-lite0"): EfficientNet-Lite0 head features, always available offline.
  Not comparable with published FID numbers.
- `InceptionFeatures` ("rFID"): the FID Inception-v3, when its weights are on disk.
Features never accumulate in memory: `RunningMoments` keeps the count, the sum and the sum
of outer products (float64), which is all the Frechet distance needs.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vqgan_lc.backbones.efficientnet_lite0 import EfficientNetLite0, load_efficientnet_lite0, to_lite0_input
from vqgan_lc.backbones.inception import FID_INPUT_SIZE, load_fid_inception
from vqgan_lc import distributed

LITE0_FD_SIZE = 256
INCEPTION_RESIZES = ("clean", "bilinear", "tf1")


class RunningMoments:
    """Streaming mean and covariance of (B, D) feature batches, in float64."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.num = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def count(self) -> int:
        return int(self.num.item())

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"RunningMoments expects features (B, {self.dim}), got {tuple(features.shape)}")
        f = features.detach().to(device=self.sum.device, dtype=torch.float64)
        self.num += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def merge(self, other: "RunningMoments") -> None:
        """Add another accumulator's samples (e.g. another shard of the same set)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge RunningMoments of dim {other.dim} into dim {self.dim}")
        self.num += other.num.to(self.num.device)
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)

    def all_reduce(self) -> None:
        """Sum the moments of every process (no-op without torch.distributed)."""
        for t in (self.num, self.sum, self.outer):
            distributed.all_reduce(t)

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise RuntimeError("RunningMoments.mean: no samples seen")
        return self.sum / self.num

    @property
    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance (divides by n - 1, like numpy.cov)."""
        if self.count < 2:
            raise RuntimeError(f"RunningMoments.covariance needs at least 2 samples, got {self.count}")
        mean = self.mean
        return (self.outer - self.num * torch.outer(mean, mean)) / (self.num - 1)


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


FRECHET_METHODS = ("sqrtm", "eigh")


def _trace_sqrt_product_sqrtm(cov1: np.ndarray, cov2: np.ndarray, eps: float) -> float:
    """Tr((C1 C2)^1/2) the way pytorch-fid and clean-fid compute it: scipy's sqrtm, a eps*I
    offset when it is not finite, and a check that numerical error left no real imaginary part."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm left an imaginary part of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((C1 C2)^1/2) = sum of sqrt(eigenvalues of C1^1/2 C2 C1^1/2): the same quantity
    (C1 C2 is similar to that symmetric PSD matrix) from two symmetric eigendecompositions,
    several times faster than sqrtm and stable when few samples make the covariances singular."""
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) for numpy arrays or tensors.

    `method="sqrtm"` reproduces pytorch-fid / clean-fid exactly (use it for rFID numbers that
    are compared with papers); `method="eigh"` computes the same trace faster and robustly.
    """
    if method not in FRECHET_METHODS:
        raise ValueError(f"method must be one of {FRECHET_METHODS}, got {method!r}")
    mu1, mu2 = np.atleast_1d(_as_numpy(mu1)), np.atleast_1d(_as_numpy(mu2))
    cov1, cov2 = np.atleast_2d(_as_numpy(cov1)), np.atleast_2d(_as_numpy(cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes {mu1.shape} {cov1.shape} {mu2.shape} {cov2.shape} do not match")
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(cov1, cov2, eps)
    else:
        tr_covmean = _trace_sqrt_product_eigh(cov1, cov2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def frechet_from_moments(a: RunningMoments, b: RunningMoments, method: str = "sqrtm") -> float:
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance, method=method)


class _FrozenFeatures(nn.Module):
    """A feature network that stays in eval mode whatever its parent does."""

    def train(self, mode: bool = True) -> "_FrozenFeatures":
        return super().train(False)


class Lite0Features(_FrozenFeatures):
    """Images (B,3,H,W) in [-1, 1] -> (B, 1280) spatially pooled EfficientNet-Lite0 head features.

    Images are resized (bilinear, antialiased) to a fixed `size` x `size` first (256 by default),
    so FD-lite0 values from different crop sizes stay comparable when they share `size`;
    non-square inputs are stretched. `size` must be a multiple of 32.
    """

    name = "FD-lite0"
    dim = EfficientNetLite0.CHANNELS["head"]

    def __init__(self, weights: str | None = None, size: int = LITE0_FD_SIZE):
        super().__init__()
        if size < 32 or size % 32:
            raise ValueError(f"Lite0Features: size must be a positive multiple of 32, got {size}")
        self.size = size
        self.net = load_efficientnet_lite0(weights)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        head = self.net.features(to_lite0_input(images), taps=("head",))["head"]
        return head.mean(dim=(2, 3))


def _resize_clean(images255: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic, clipped to 0..255."""
    arr = images255.detach().float().cpu().numpy()
    out = np.empty((*arr.shape[:2], size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(arr[i, c]).resize((size, size), Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 255)).to(images255.device)


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x `ResizeBilinear` (align_corners=False, no half-pixel centres), the resize
    inside the Inception graph of the ADM evaluation suite: output pixel i samples the input at
    i * in / out (so the image's last rows and columns weigh less than in torch's bilinear),
    interpolating linearly between the two nearest pixels, the upper one clamped to the border."""
    x = images.float()

    def taps(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        where = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = where.floor().long()
        return lo, (lo + 1).clamp_max(n_in - 1), where - lo.float()

    y_lo, y_hi, y_frac = taps(x.shape[-2])
    x_lo, x_hi, x_frac = taps(x.shape[-1])
    left, right = x[..., x_lo], x[..., x_hi]
    rows = left + (right - left) * x_frac
    top, bottom = rows[..., y_lo, :], rows[..., y_hi, :]
    return top + (bottom - top) * y_frac[:, None]


class InceptionFeatures(_FrozenFeatures):
    """Images (B,3,H,W) in [-1, 1] -> (B, 2048) FID Inception pool3 features.

    Images are rounded to 8 bits (as image files are), resized to 299x299 and scaled --
    `resize="clean"`: clean-fid's per-channel PIL bicubic, then x / 127.5 - 1 (default, the
    paper's rFID protocol); "bilinear": pytorch-fid's torch bilinear, then x / 127.5 - 1;
    "tf1": the TF graph's own input path that the ADM suite runs, TF 1.x bilinear
    (`resize_bilinear_tf1`), then (x - 128) / 128.

    `features(images255)` takes 8-bit pixel values (B,3,H,W) in 0..255 (uint8 or float) and
    returns the pool, spatial (sFID) and logit features of one pass (`FIDInceptionV3.features`).
    """

    name = "rFID"
    dim = 2048
    # the sizes of `features`' outputs (logits are not accumulated as moments)
    feature_dims = {"pool": 2048, "spatial": 2023, "logits": 1008}

    def __init__(self, weights: str | None = None, resize: str = "clean"):
        super().__init__()
        if resize not in INCEPTION_RESIZES:
            raise ValueError(f"resize must be one of {INCEPTION_RESIZES}, got {resize!r}")
        self.resize = resize
        self.net = load_fid_inception(weights)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
        return self.net(self._network_input(x))

    def features(self, images255: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.features(self._network_input(images255.float()))

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """8-bit pixel values (float) -> the network's 299x299 input, by this instance's protocol."""
        if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            if self.resize == "clean":
                x = _resize_clean(x, FID_INPUT_SIZE)
            elif self.resize == "tf1":
                x = resize_bilinear_tf1(x, FID_INPUT_SIZE)
            else:
                x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        # the TF graph subtracts 128 and multiplies by 1/128; pytorch-fid and clean-fid map 0..255 to [-1, 1]
        return (x - 128.0) / 128.0 if self.resize == "tf1" else x / 127.5 - 1.0
