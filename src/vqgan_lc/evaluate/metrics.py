"""Per-image reconstruction metrics: PSNR (RGB and Y), SSIM.

Inputs are image batches (B,3,H,W) in [-1, 1]; both are clamped to [-1, 1] first (a decoder
can overshoot, a saved image cannot) and mapped to [0, 1]. Every function returns (B,)
values, so an evaluator can keep running sums. Identical images give PSNR = inf.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma with "studio swing" (Y in [16, 235] on a 0..255 scale), i.e. the Y of
# MATLAB's rgb2ycbcr, which image-restoration papers report PSNR-Y with.
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B,3,H,W), got {tuple(images.shape)}")
    return (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"image batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return _to_unit(x), _to_unit(y)


def _psnr_from_mse(mse: torch.Tensor, peak: float) -> torch.Tensor:
    # mse == 0 -> +inf, which is the right value for identical images
    return 10.0 * (math.log10(peak**2) - torch.log10(mse))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over RGB, peak 1 on [0, 1] (equivalently 255 on 0..255); (B,)."""
    a, b = _check_pair(x, y)
    return _psnr_from_mse((a - b).pow(2).flatten(1).mean(1), 1.0)


def rgb_to_y(images01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0, 1] -> (B,1,H,W) BT.601 studio-swing luma in [16, 235]."""
    w = images01.new_tensor(BT601_Y_WEIGHTS).view(1, 3, 1, 1)
    return (images01 * w).sum(dim=1, keepdim=True) + BT601_Y_OFFSET


def psnr_y(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of the BT.601 luma (MATLAB rgb2ycbcr Y, 16..235), peak 255, no rounding; (B,)."""
    a, b = _check_pair(x, y)
    return _psnr_from_mse((rgb_to_y(a) - rgb_to_y(b)).pow(2).flatten(1).mean(1), 255.0)


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' (no padding): border pixels whose window
    leaves the image are not scored, as in Wang et al. and scikit-image."""
    c = images.shape[1]
    images = F.conv2d(images, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(images, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004): Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, data range 1
    on [0, 1], computed per RGB channel and averaged over channels and positions; (B,)."""
    a, b = _check_pair(x, y)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    a, b = a.double(), b.double()  # E[x^2] - E[x]^2 cancels badly in float32
    g = _gaussian_window(a.device, a.dtype)
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a.pow(2)
    var_b = _blur(b * b, g) - mu_b.pow(2)
    cov = _blur(a * b, g) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1).float()
