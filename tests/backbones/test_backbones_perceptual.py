import pytest
import torch

from vqgan_lc.backbones.vgg import VGG16Features
from vqgan_lc.backbones.perceptual import (
    LITE0_TAPS,
    build_perceptual,
    lpips_linear_path,
    lpips_vgg_available,
    unit_normalize,
)


@pytest.fixture(scope="module")
def lite0():
    return build_perceptual("perceptual-lite0")


def _smooth_images(n=2, size=64, seed=0):
    """Low-frequency random images in [-1, 1] (closer to photos than white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_lite0_is_zero_for_identical_images_and_symmetric(lite0):
    x, y = _smooth_images(seed=0), _smooth_images(seed=1)
    assert lite0.name == "perceptual-lite0"
    assert torch.allclose(lite0(x, x), torch.zeros(2), atol=1e-6)
    d_xy, d_yx = lite0(x, y), lite0(y, x)
    assert d_xy.shape == (2,)
    assert (d_xy > 0).all()
    assert torch.allclose(d_xy, d_yx, rtol=1e-5)


def test_lite0_grows_with_noise(lite0):
    x = _smooth_images(n=2)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    d = [lite0(x, (x + s * noise).clamp(-1, 1)).mean().item() for s in (0.02, 0.1, 0.4)]
    assert 0 < d[0] < d[1] < d[2]


def test_lite0_is_frozen_and_passes_gradients_to_inputs(lite0):
    x = _smooth_images(seed=0).requires_grad_()
    lite0.train()  # a parent's .train() must not unfreeze BatchNorm statistics
    assert not lite0.training and not lite0.net.training
    lite0(x, _smooth_images(seed=1)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in lite0.parameters())


def test_lite0_accepts_sizes_that_are_not_multiples_of_32(lite0):
    x, y = _smooth_images(size=48, seed=0), _smooth_images(size=48, seed=1)
    x, y = x[..., :40], y[..., :40]  # 48 x 40
    d = lite0(x, y)
    assert d.shape == (2,) and (d > 0).all()


def test_lite0_matches_the_documented_formula(lite0):
    x, y = _smooth_images(seed=0), _smooth_images(seed=1)
    from vqgan_lc.backbones.efficientnet_lite0 import to_lite0_input

    fx = lite0.net.features(to_lite0_input(x), taps=LITE0_TAPS)
    fy = lite0.net.features(to_lite0_input(y), taps=LITE0_TAPS)
    expected = sum((unit_normalize(fx[t]) - unit_normalize(fy[t])).pow(2).mean(dim=(1, 2, 3)) for t in LITE0_TAPS)
    assert torch.allclose(lite0(x, y), expected, rtol=1e-4)


def test_perceptual_rejects_bad_input(lite0):
    with pytest.raises(ValueError, match="same shape"):
        lite0(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown perceptual"):
        build_perceptual("lpips-alex")


# --- lpips-vgg with synthetic weights ---------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_vgg(tmp_path_factory):
    """A random VGG16 in torchvision's file layout: (path, the features module it holds)."""
    torch.manual_seed(0)
    vgg = VGG16Features().eval()
    state = dict(vgg.state_dict())
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    vgg_file = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, vgg_file)
    return vgg_file, vgg


def _write_linear_layers(tmp_path, lin_key="model.1"):
    lins = {f"lin{i}.{lin_key}.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    lin_file = tmp_path / "vgg.pth"
    torch.save(lins, lin_file)
    return lin_file, lins


@pytest.mark.parametrize("lin_key", ["model.1", "model.0"])
def test_lpips_vgg_builds_from_local_files_and_follows_lpips(tmp_path, synthetic_vgg, lin_key):
    vgg_file, ref = synthetic_vgg
    lin_file, lins = _write_linear_layers(tmp_path, lin_key)
    loss = build_perceptual("lpips-vgg", vgg_weights=str(vgg_file), lpips_weights=str(lin_file))
    assert loss.name == "lpips-vgg"
    x, y = _smooth_images(size=32, seed=0), _smooth_images(size=32, seed=1)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    # LPIPS by hand: scaling layer, VGG taps, unit-normalise, squared diff, lin weights, spatial mean
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    tx, ty = ref.taps((x - shift) / scale), ref.taps((y - shift) / scale)
    expected = sum(
        ((unit_normalize(a) - unit_normalize(b)).pow(2) * lins[f"lin{i}.{lin_key}.weight"]).sum(1).mean(dim=(1, 2))
        for i, (a, b) in enumerate(zip(tx, ty))
    )
    assert torch.allclose(loss(x, y), expected, rtol=1e-4)


def test_lpips_vgg_finds_weights_through_env_vars(tmp_path, synthetic_vgg, monkeypatch):
    vgg_file, _ = synthetic_vgg
    lin_file, _ = _write_linear_layers(tmp_path)
    monkeypatch.setenv("VQGAN_LC_VGG16", str(vgg_file))
    monkeypatch.setenv("VQGAN_LC_LPIPS", str(lin_file))
    assert lpips_linear_path() == lin_file
    assert lpips_vgg_available()
    assert build_perceptual("lpips-vgg").name == "lpips-vgg"


def test_lpips_vgg_missing_weights_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VQGAN_LC_VGG16", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    assert not lpips_vgg_available()
    with pytest.raises(RuntimeError) as err:
        build_perceptual("lpips-vgg")
    message = str(err.value)
    assert "\n" not in message and "VQGAN_LC_VGG16" in message and "vgg16-397923af.pth" in message
    with pytest.raises(RuntimeError, match="not found at"):
        lpips_linear_path(tmp_path / "nope.pth")


def test_lpips_vgg_rejects_a_wrong_linear_file(tmp_path, synthetic_vgg):
    vgg_file, _ = synthetic_vgg
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.rand(1, 32, 1, 1)}, bad)
    with pytest.raises(RuntimeError, match="lin0"):
        build_perceptual("lpips-vgg", vgg_weights=str(vgg_file), lpips_weights=str(bad))
