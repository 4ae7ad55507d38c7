import math

import pytest
import torch
from torch import nn

from vqgan_lc.tokenizer.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, vanilla_d_loss
from vqgan_lc.tokenizer.losses import LossConfig, TokenizerLoss
from vqgan_lc.backbones.perceptual import PerceptualLoss


# --- discriminator ---------------------------------------------------------------------------

@pytest.mark.parametrize("layers, size, out", [(3, 64, 6), (3, 256, 30), (2, 64, 14), (1, 32, 14)])
def test_patch_discriminator_gives_one_logit_per_patch(layers, size, out):
    disc = PatchDiscriminator(num_layers=layers)
    assert disc(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)


def test_patch_discriminator_layout_and_init():
    torch.manual_seed(0)
    disc = PatchDiscriminator(base_channels=64, num_layers=3)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    assert len(norms) == 3  # none after the first conv
    assert abs(convs[3].weight.std().item() - 0.02) < 0.002
    assert abs(norms[0].weight.mean().item() - 1.0) < 0.01
    assert all(m.negative_slope == 0.2 for m in disc.modules() if isinstance(m, nn.LeakyReLU))
    with pytest.raises(ValueError, match="num_layers"):
        PatchDiscriminator(num_layers=0)


def test_hinge_and_vanilla_d_loss_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # real: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25 ; fake: relu(1-2)=0, relu(1+0.5)=1.5 -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5)
    assert hinge_d_loss(torch.full((3,), 5.0), torch.full((3,), -5.0)).item() == 0.0
    sp = torch.nn.functional.softplus
    expected = 0.5 * (sp(-real).mean() + sp(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected.item())


# --- adaptive weight -------------------------------------------------------------------------

def test_adaptive_weight_matches_hand_computation_and_keeps_graph():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (w**2).sum()  # d/dw = 2w = (2, 4), norm sqrt(20)
    g = (3 * w).sum()  # d/dw = (3, 3), norm sqrt(18)
    weight = adaptive_weight(nll, g, w, disc_weight=0.1)
    assert weight.item() == pytest.approx(math.sqrt(20) / (math.sqrt(18) + 1e-4) * 0.1, rel=1e-6)
    assert not weight.requires_grad
    (nll + weight * g).backward()  # the graph was retained
    assert torch.allclose(w.grad, 2 * w.detach() + 3 * weight)


def test_adaptive_weight_is_clamped_and_zero_without_grad():
    w = nn.Parameter(torch.tensor([1.0]))
    weight = adaptive_weight((w * 1e3).sum(), (w * 1e-9).sum(), w, disc_weight=1.0)
    assert weight.item() == pytest.approx(1e4)
    with torch.no_grad():
        assert adaptive_weight((w * 2).sum(), (w * 3).sum(), w, disc_weight=0.1).item() == 0.0


def test_adaptive_weight_rejects_a_layer_outside_the_graph():
    w, other = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="last_layer"):
        adaptive_weight((w * 2).sum(), (w * 3).sum(), other, disc_weight=0.1)


# --- TokenizerLoss ---------------------------------------------------------------------------

class TinyDecoder(nn.Module):
    """Stands in for the tokenizer: its last conv is the adaptive weight's `last_layer`."""

    def __init__(self):
        super().__init__()
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv_out(x)


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g) * 2 - 1


def test_reconstruction_switch_l1_l2():
    images = torch.zeros(2, 3, 16, 16)
    recon = torch.full_like(images, 0.5)
    q = torch.tensor(0.0)
    for kind, expected in (("l1", 0.5), ("l2", 0.25)):
        loss = TokenizerLoss(LossConfig(reconstruction=kind, perceptual="none", disc_start=10))
        total, logs = loss.generator_loss(images, recon, q, step=0, last_layer=nn.Parameter(torch.ones(1)))
        assert total.item() == pytest.approx(expected)
        assert logs["rec"] == pytest.approx(expected)


def _generator_setup(**loss):
    """A seeded loss without perceptual term, a tiny decoder, a batch and its reconstruction."""
    torch.manual_seed(0)
    criterion, dec = TokenizerLoss(LossConfig(perceptual="none", **loss)), TinyDecoder()
    images = _batch()
    return criterion, dec, images, dec(images * 0.5)


def test_generator_loss_before_disc_start_has_no_gan_term():
    loss, dec, images, recon = _generator_setup(disc_start=100, quantizer_weight=0.1, reconstruction_weight=2.0)
    q = torch.tensor(0.7, requires_grad=True)
    total, logs = loss.generator_loss(images, recon, q, step=99, last_layer=dec.conv_out.weight)
    expected = 2.0 * (recon - images).abs().mean() + 0.1 * 0.7
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["g_loss"] == 0.0 and logs["adaptive_weight"] == 0.0
    assert set(logs) == {"rec", "perceptual", "quantizer", "g_loss", "adaptive_weight", "total"}
    total.backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())  # D never ran
    assert q.grad.item() == pytest.approx(0.1)


def test_generator_loss_after_disc_start_adds_weighted_gan_term():
    loss, dec, images, recon = _generator_setup(disc_start=5, disc_weight=0.1, quantizer_weight=0.0)
    total, logs = loss.generator_loss(images, recon, torch.tensor(0.0), step=5, last_layer=dec.conv_out.weight)
    assert logs["adaptive_weight"] > 0
    assert logs["g_loss"] != 0
    assert total.item() == pytest.approx(logs["rec"] + logs["adaptive_weight"] * logs["g_loss"], rel=1e-5)
    total.backward()  # works after the adaptive weight's autograd.grad calls
    assert dec.conv_out.weight.grad is not None


def test_discriminator_loss_gated_by_disc_start():
    torch.manual_seed(0)
    loss = TokenizerLoss(LossConfig(perceptual="none", disc_start=10))
    images, recon = _batch(0), _batch(1).requires_grad_()
    d0, logs0 = loss.discriminator_loss(images, recon, step=9)
    assert d0.item() == 0.0 and not d0.requires_grad and logs0["d_loss"] == 0.0
    assert not loss.discriminator_active(9) and loss.discriminator_active(10)
    d1, logs1 = loss.discriminator_loss(images, recon, step=10)
    assert d1.requires_grad and d1.item() == pytest.approx(logs1["d_loss"])
    d1.backward()
    assert recon.grad is None  # reconstructions are detached for D
    assert all(p.grad is not None for p in loss.discriminator.parameters())


class ConstantPerceptual(PerceptualLoss):
    name = "perceptual-lite0"

    def forward(self, x, y):
        return (x - y).pow(2).flatten(1).sum(1)


def test_perceptual_term_is_weighted_and_checked():
    images, recon = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5)
    loss = TokenizerLoss(LossConfig(perceptual_weight=0.5, disc_start=10), perceptual=ConstantPerceptual())
    total, logs = loss.generator_loss(images, recon, torch.tensor(0.0), step=0, last_layer=nn.Parameter(torch.ones(1)))
    assert logs["perceptual"] == pytest.approx(0.25 * 192)
    assert total.item() == pytest.approx(0.5 + 0.5 * 0.25 * 192)
    with pytest.raises(ValueError, match="lpips-vgg"):
        TokenizerLoss(LossConfig(perceptual="lpips-vgg"), perceptual=ConstantPerceptual())


def test_loss_config_rejects_unknown_modes():
    with pytest.raises(ValueError, match="reconstruction"):
        LossConfig(reconstruction="l3").validate()
    with pytest.raises(ValueError, match="perceptual"):
        LossConfig(perceptual="lpips-alex").validate()
    with pytest.raises(ValueError, match="disc_loss"):
        LossConfig(disc_loss="wgan").validate()
