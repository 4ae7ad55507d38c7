import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

from vqgan_lc.evaluate.metrics import psnr, psnr_y, ssim


def _pair(seed=0, size=48, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(3, 3, size // 8, size // 8, generator=g) * 1.6 - 0.8
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def _np01(t):
    return ((t + 1) / 2).double().numpy()


def test_psnr_matches_scikit_image():
    x, y = _pair()
    expected = [peak_signal_noise_ratio(_np01(a), _np01(b), data_range=1.0) for a, b in zip(x, y)]
    assert np.allclose(psnr(x, y).numpy(), expected, rtol=1e-4)
    tm = tm_psnr((y + 1) / 2, (x + 1) / 2, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert torch.allclose(psnr(x, y), tm, rtol=1e-4)


def test_psnr_y_uses_bt601_studio_luma_like_rgb2ycbcr():
    x, y = _pair(seed=1)
    expected = []
    for a, b in zip(x, y):
        ya = rgb2ycbcr(_np01(a).transpose(1, 2, 0))[..., 0]  # Y in 16..235, MATLAB convention
        yb = rgb2ycbcr(_np01(b).transpose(1, 2, 0))[..., 0]
        expected.append(peak_signal_noise_ratio(ya, yb, data_range=255))
    assert np.allclose(psnr_y(x, y).numpy(), expected, rtol=1e-4)


def test_ssim_matches_scikit_image_valid_window():
    # scikit-image (like Wang et al.'s MATLAB code) scores only positions whose 11x11 window fits;
    # torchmetrics also scores reflect-padded borders, so it differs on small images
    x, y = _pair(seed=2, noise=0.2)
    ours = ssim(x, y)
    sk = [
        structural_similarity(_np01(a), _np01(b), data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in zip(x, y)
    ]
    assert np.allclose(ours.numpy(), sk, atol=1e-4)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    x, _ = _pair()
    assert torch.isinf(psnr(x, x)).all() and torch.isinf(psnr_y(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3))


def test_metrics_clamp_overshooting_reconstructions():
    x, y = _pair(seed=3)
    overshoot = y.clone()
    overshoot[y > 0.9] = 1.5  # a decoder may go past the valid range; a saved image cannot
    assert torch.allclose(psnr(x, overshoot), psnr(x, overshoot.clamp(-1, 1)))
    assert torch.allclose(ssim(x, overshoot), ssim(x, overshoot.clamp(-1, 1)))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        psnr_y(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
