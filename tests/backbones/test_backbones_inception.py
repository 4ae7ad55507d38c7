"""The FID Inception's three outputs for the ADM suite, on random weights built here (never downloaded)."""
import pytest
import torch

from vqgan_lc.backbones.inception import NUM_LOGITS, SPATIAL_DIM, FIDInceptionV3


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    for m in model.modules():  # random BatchNorm statistics, so that no activation is trivially zero
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_features_from_one_pass(net):
    captured = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda mod, inp, out: captured.setdefault("map", out))
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        feats = net.features(x)
        pool = net(x)
    hook.remove()
    assert feats["pool"].shape == (2, 2048) and feats["spatial"].shape == (2, SPATIAL_DIM) == (2, 2023)
    assert feats["logits"].shape == (2, NUM_LOGITS) == (2, 1008)
    assert torch.allclose(feats["pool"], pool, atol=1e-5)
    # sFID reads mixed_6/conv = Mixed_6d's 1x1 branch (after its ReLU), channels 0..6, in TF's (h, w, c) order
    branch = captured["map"]
    assert branch.shape == (2, 192, 17, 17)
    assert torch.equal(feats["spatial"][:, :7], branch[:, :7, 0, 0])  # pixel (0, 0): its 7 channels come first
    assert torch.equal(feats["spatial"][:, 7:14], branch[:, :7, 0, 1])
    assert torch.equal(feats["spatial"].view(2, 17, 17, 7), branch[:, :7].permute(0, 2, 3, 1))
    assert (feats["spatial"] >= 0).all()  # after the ReLU
    # the suite's softmax/logits/MatMul: pool @ W without the classifier's bias
    assert torch.allclose(feats["logits"], pool @ net.fc.weight.T, atol=1e-4)
    assert not torch.allclose(feats["logits"], net.fc(pool), atol=1e-4)


def test_features_need_299_px(net):
    with torch.no_grad(), pytest.raises(ValueError, match="299"):
        net.features(torch.zeros(1, 3, 331, 331))
