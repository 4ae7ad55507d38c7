import numpy as np
import pytest
import torch

from vqgan_lc.backbones.inception import FIDInceptionV3, available, load_fid_inception
from vqgan_lc.evaluate.frechet import InceptionFeatures, Lite0Features, RunningMoments, frechet_distance


def _features(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 3


def test_running_moments_equal_numpy_mean_and_cov():
    x = _features()
    m = RunningMoments(x.shape[1])
    m.update(torch.from_numpy(x).float())
    xf = torch.from_numpy(x).float().double().numpy()  # the float32 values that were fed
    assert m.count == len(x)
    assert np.allclose(m.mean.numpy(), xf.mean(0), atol=1e-10)
    assert np.allclose(m.covariance.numpy(), np.cov(xf, rowvar=False), atol=1e-9)
    assert m.mean.dtype == torch.float64 and m.covariance.dtype == torch.float64


def test_running_moments_chunking_and_merge_invariance():
    x = torch.from_numpy(_features(seed=1))
    whole = RunningMoments(6)
    whole.update(x)
    chunked = RunningMoments(6)
    for part in x.split(7):
        chunked.update(part)
    a, b = RunningMoments(6), RunningMoments(6)
    a.update(x[:50])
    b.update(x[50:])
    a.merge(b)
    for other in (chunked, a):
        assert other.count == whole.count
        assert torch.allclose(other.mean, whole.mean, atol=1e-12)
        assert torch.allclose(other.covariance, whole.covariance, atol=1e-10)
    a.all_reduce()  # no process group: unchanged
    assert torch.allclose(a.covariance, whole.covariance, atol=1e-10)


def test_running_moments_errors():
    m = RunningMoments(4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        m.update(torch.zeros(3, 5))
    m.update(torch.zeros(1, 4))
    with pytest.raises(RuntimeError, match="at least 2"):
        m.covariance
    with pytest.raises(ValueError, match="dim"):
        m.merge(RunningMoments(3))


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    for method in ("sqrtm", "eigh"):
        assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method) == pytest.approx(expected, rel=1e-10)
        assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1), method=method) == pytest.approx(0.0, abs=1e-10)


def test_frechet_eigh_handles_singular_covariances():
    # fewer samples than dimensions (a small evaluation set): rank-deficient covariances
    x, y = _features(n=5, d=12, seed=4), _features(n=5, d=12, seed=5)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    scale = np.trace(c1)
    assert frechet_distance(x.mean(0), c1, x.mean(0), c1, method="eigh") == pytest.approx(0.0, abs=1e-7 * scale)
    d = frechet_distance(x.mean(0), c1, y.mean(0), c2, method="eigh")
    assert d == pytest.approx(frechet_distance(x.mean(0), c1 + 1e-9 * np.eye(12), y.mean(0), c2 + 1e-9 * np.eye(12)), rel=1e-4)


def test_frechet_distance_full_covariances_against_eigendecomposition():
    c1, c2 = np.cov(_features(seed=2), rowvar=False), np.cov(_features(seed=3), rowvar=False)
    mu1, mu2 = np.arange(6.0), np.ones(6)
    # Tr((C1 C2)^1/2) = Tr((C1^1/2 C2 C1^1/2)^1/2), the symmetric form, via eigh
    w, v = np.linalg.eigh(c1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ c2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(inner))
    for method in ("sqrtm", "eigh"):
        got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(c1), mu2, c2, method=method)  # tensors or arrays
        assert got == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(mu1, c1, mu2, c2, method="svd")
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, c1, mu2[:5], c2)


def test_lite0_features_are_pooled_head_at_256px():
    net = Lite0Features()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    f = net(x)
    assert f.shape == (2, 1280) and (f >= 0).all()  # ReLU6 head, spatially averaged
    up = torch.nn.functional.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(net(up), f, atol=1e-5)  # the same fixed 256 px resize happens inside
    net.train()
    assert not net.net.training


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_fid_inception_layout_and_output_shape(random_inception):
    net = random_inception
    # torchvision's Inception-v3 without the auxiliary head (23,834,568 parameters at 1000
    # classes) plus the 8 extra logits of FID's 1008-way classifier
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2048 + 8
    keys = net.state_dict().keys()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var",
                "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight"):
        assert key in keys
    with torch.no_grad():
        assert net(torch.rand(1, 3, 299, 299) * 2 - 1).shape == (1, 2048)


def test_inception_weights_lookup_and_features(tmp_path, monkeypatch, random_inception):
    monkeypatch.delenv("VQGAN_LC_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    assert not available()
    with pytest.raises(RuntimeError) as err:
        load_fid_inception()
    assert "\n" not in str(err.value) and "VQGAN_LC_INCEPTION" in str(err.value)

    state = {k: v for k, v in random_inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, file)  # like the real file: written before BatchNorm counted batches
    monkeypatch.setenv("VQGAN_LC_INCEPTION", str(file))
    assert available()
    feats = InceptionFeatures(resize="clean")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        clean = feats(x)
        feats.resize = "bilinear"
        bilinear = feats(x)
        # 8-bit rounding, torch bilinear resize, [-1, 1] scaling, then the loaded network
        x255 = ((x + 1) * 127.5).round()
        resized = torch.nn.functional.interpolate(x255, size=(299, 299), mode="bilinear", align_corners=False)
        expected = random_inception(resized / 127.5 - 1)
    assert clean.shape == (2, 2048) and torch.isfinite(clean).all()
    assert torch.allclose(bilinear, expected, atol=1e-4)
    assert not torch.allclose(clean, bilinear)  # bicubic vs bilinear resize
    with pytest.raises(ValueError, match="resize"):
        InceptionFeatures(resize="nearest")


def test_tf1_bilinear_resize_matches_its_definition():
    from vqgan_lc.evaluate.frechet import resize_bilinear_tf1

    x = torch.rand(2, 3, 5, 7) * 255
    out = resize_bilinear_tf1(x, 11)
    expected = torch.empty(2, 3, 11, 11)
    for i in range(11):  # TF 1.x, align_corners=False: output i samples input i * in / out, upper tap clamped
        yi = i * 5 / 11
        y0, fy = int(yi), yi - int(yi)
        y1 = min(y0 + 1, 4)
        for j in range(11):
            xj = j * 7 / 11
            x0, fx = int(xj), xj - int(xj)
            x1 = min(x0 + 1, 6)
            top = x[..., y0, x0] * (1 - fx) + x[..., y0, x1] * fx
            bottom = x[..., y1, x0] * (1 - fx) + x[..., y1, x1] * fx
            expected[..., i, j] = top * (1 - fy) + bottom * fy
    assert torch.allclose(out, expected, atol=1e-3)
    assert torch.equal(resize_bilinear_tf1(x, 5)[..., :5, :5][..., 0, 0], x[..., 0, 0])  # the first pixel is kept


def test_inception_features_tf1_protocol(tmp_path, monkeypatch, random_inception):
    from vqgan_lc.evaluate.frechet import resize_bilinear_tf1

    state = {k: v for k, v in random_inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, file)
    feats = InceptionFeatures(str(file), resize="tf1")
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        got = feats.features(images)
        # the suite's graph input: TF 1.x bilinear to 299, then (x - 128) / 128
        expected = random_inception.features((resize_bilinear_tf1(images.float(), 299) - 128) / 128)
    assert set(got) == {"pool", "spatial", "logits"}
    for key in got:
        assert torch.allclose(got[key], expected[key], atol=1e-4), key
