"""The project's own networks and metrics against the libraries they replace.

Those libraries (lpips, torchmetrics' LPIPS, pytorch-fid, open_clip) need torchvision, which
does not import beside the CPU torch wheel, so each comparison runs only where its library
imports and is skipped elsewhere. No weights are downloaded: both sides get the same random
weights, which checks the layout, the layer order and every normalisation; the published
weights then load into ours key for key. scikit-image has no torchvision in it: the SSIM
comparison runs everywhere the [demo] extra is installed.
"""
import importlib

import numpy as np
import pytest
import torch

from vqgan_lc.evaluate.metrics import ssim


def _import_or_skip(name: str):
    """`pytest.importorskip`, also for libraries that fail with other errors than ImportError
    (torchvision raises RuntimeError beside a torch build it was not made for)."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any failure to import means "not available here"
        pytest.skip(f"{name} does not import here ({type(err).__name__}: {str(err)[:80]})")


def _photo_pair(size: int = 96):
    """A real photo crop and a degraded copy, as (1,3,H,W) tensors in [-1, 1]."""
    data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(data.astronaut()[100:100 + size, 180:180 + size].copy()).permute(2, 0, 1)
    x = photo.float().div(127.5).sub(1).unsqueeze(0)
    g = torch.Generator().manual_seed(0)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    y = (blurred + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _photo_pair()
    to01 = [(t[0].permute(1, 2, 0).double().numpy() + 1) / 2 for t in (x, y)]
    reference = metrics.structural_similarity(to01[0], to01[1], data_range=1.0, channel_axis=-1,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ours = ssim(x, y).item()
    assert 0.2 < ours < 0.95  # a real, partly degraded pair: not a degenerate 0 or 1
    assert ours == pytest.approx(reference, abs=1e-6)


def _lpips_reference(source: str):
    """An LPIPS-VGG v0.1 module with random VGG weights and the published linear layers."""
    if source == "lpips":
        lpips = _import_or_skip("lpips")
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    module = _import_or_skip("torchmetrics.functional.image.lpips")
    _import_or_skip("torchvision")
    return module._LPIPS(pretrained=True, net="vgg", pnet_rand=True).eval()


@pytest.mark.parametrize("source", ["lpips", "torchmetrics"])
def test_lpips_vgg_matches_the_reference_implementation(source, tmp_path):
    from vqgan_lc.backbones.perceptual import LPIPS_PACKAGE_FILES, build_perceptual
    from vqgan_lc.files import package_file

    reference = _lpips_reference(source)
    # its VGG slices keep torchvision's indices (slice1.0 is features.0): write torchvision's layout
    state = {f"features.{name}": p for i in range(1, 6)
             for name, p in getattr(reference.net, f"slice{i}").state_dict().items()}
    vgg_file = tmp_path / "vgg16-397923af.pth"
    torch.save(state, vgg_file)
    lins = next(path for path in (package_file(*where) for where in LPIPS_PACKAGE_FILES) if path is not None)
    ours = build_perceptual("lpips-vgg", vgg_weights=str(vgg_file), lpips_weights=str(lins))
    x, y = _photo_pair(64)
    with torch.no_grad():
        expected = reference(x, y, normalize=False).flatten()
        assert torch.allclose(ours(x, y), expected, rtol=1e-4, atol=1e-6)


def _random_batchnorm_statistics(model: torch.nn.Module) -> None:
    """BatchNorm statistics that are not the identity, so that their use is compared too."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)


def test_fid_inception_matches_pytorch_fid(monkeypatch):
    inception = _import_or_skip("pytorch_fid.inception")
    from vqgan_lc.backbones.inception import FIDInceptionV3

    torch.manual_seed(0)
    ours = FIDInceptionV3().eval()
    _random_batchnorm_statistics(ours)
    # pytorch-fid fetches its weights through this function: hand it ours instead of downloading
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: ours.state_dict())
    reference = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False,
                                      normalize_input=False, use_fid_inception=True).eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference(x)[0].flatten(1)
        assert torch.allclose(ours(x), expected, rtol=1e-4, atol=1e-5)


def test_clip_rn50_matches_open_clip(tmp_path):
    open_clip = _import_or_skip("open_clip")
    from vqgan_lc.backbones.clip_resnet import build_clip_rn50

    torch.manual_seed(0)
    visual = open_clip.create_model("RN50", pretrained=None).visual.eval()
    _random_batchnorm_statistics(visual)
    weights = tmp_path / "rn50.pt"
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, weights)
    ours = build_clip_rn50(str(weights), layer="layer4")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
    from vqgan_lc.backbones.clip import to_clip_pixels

    with torch.no_grad():
        pixels = to_clip_pixels(x, 224)
        expected = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
        assert torch.allclose(ours(x), expected, rtol=1e-4, atol=1e-5)
    assert np.isfinite(expected.numpy()).all()
