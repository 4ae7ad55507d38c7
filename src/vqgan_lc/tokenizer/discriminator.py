"""PatchGAN discriminator, GAN losses and VQGAN's adaptive GAN weight.

The discriminator is the pix2pix / taming-transformers "NLayerDiscriminator" layout that
VQGAN and VQGAN-LC train with: 4x4 convolutions, 64 base channels doubling per layer (at
most 8x), BatchNorm, LeakyReLU 0.2, one logit per overlapping patch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 4
PADDING = 1


class PatchDiscriminator(nn.Module):
    """Images (B, in_channels, H, W) -> patch logits (B, 1, h, w); h = H/2^num_layers - 2.

    `num_layers` stride-2 convolutions (the first without normalisation), then one stride-1
    convolution and the stride-1 output convolution. At 256 px and 3 layers: (B, 1, 30, 30),
    each logit seeing a 70x70 receptive field.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"PatchDiscriminator needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, KERNEL, stride=2, padding=PADDING),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            # the last hidden layer keeps the resolution (stride 1), as in pix2pix
            stride = 2 if n < num_layers else 1
            layers += [
                # no bias: BatchNorm's shift replaces it
                nn.Conv2d(base_channels * prev, base_channels * mult, KERNEL, stride=stride, padding=PADDING, bias=False),
                nn.BatchNorm2d(base_channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, KERNEL, stride=1, padding=PADDING))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for D: 0.5 * (E[softplus(-D(x))] + E[softplus(D(G(z)))])."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: the generator term VQGAN pairs with either discriminator loss."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: nn.Parameter,
    disc_weight: float,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN's balance: ||d nll / d W|| / (||d g_loss / d W|| + 1e-4), clamped to [0, max_weight],
    times `disc_weight`, where W is the decoder's last layer. Returned detached.

    The graph is retained so the caller can still backpropagate the total loss. Under no_grad
    (validation) there are no gradients to compare and the weight is 0.
    """
    if not (torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad):
        return torch.zeros((), device=nll_loss.device)
    try:
        nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    except RuntimeError as err:
        raise RuntimeError(f"adaptive GAN weight: last_layer must be the decoder's final weight used by both losses ({err})") from err
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return (weight.clamp(0.0, max_weight) * disc_weight).detach()
