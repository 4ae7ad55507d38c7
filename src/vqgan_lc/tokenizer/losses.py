"""The tokenizer's training objective: reconstruction + perceptual + quantizer + adaptive GAN.

Generator side (encoder, decoder, projector):
    total = w_rec * rec + w_p * perceptual + quantizer_weight * quantizer_loss
            + [step >= disc_start] * adaptive_weight * g_loss
where `quantizer_loss` is the quantizer's own alpha/beta-weighted commitment loss
(alpha 1.0, beta 0.33 in the paper) and `adaptive_weight` is VQGAN's gradient-norm ratio on
the decoder's last layer times `disc_weight`. Discriminator side: hinge loss on real images
vs. detached reconstructions, from `disc_start` on.
"""
from __future__ import annotations

from dataclasses import dataclass

from vqgan_lc.config import Config

import torch
import torch.nn.functional as F
from torch import nn

from vqgan_lc.tokenizer.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    generator_adversarial_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from vqgan_lc.backbones.perceptual import PERCEPTUAL_NAMES, PerceptualLoss, build_perceptual

RECONSTRUCTION_LOSSES = ("l1", "l2")
DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


@dataclass
class LossConfig(Config):
    reconstruction: str = "l1"  # "l1" (reference code) | "l2" (paper text)
    reconstruction_weight: float = 1.0
    perceptual: str = "perceptual-lite0"  # "perceptual-lite0" (offline) | "lpips-vgg" (paper) | "none"
    perceptual_weight: float = 1.0
    quantizer_weight: float = 0.1  # overall factor on the quantizer's (alpha, beta)-weighted loss, as in the reference code
    disc_weight: float = 0.1  # paper: adaptive weight times 0.1
    disc_start: int = 50_000  # optimizer step at which the GAN terms switch on
    disc_layers: int = 3
    disc_channels: int = 64
    disc_loss: str = "hinge"  # "hinge" | "vanilla"

    def check(self) -> None:
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTION_LOSSES}, got {self.reconstruction!r}")
        if self.perceptual not in (*PERCEPTUAL_NAMES, "none"):
            raise ValueError(f"perceptual must be one of {(*PERCEPTUAL_NAMES, 'none')}, got {self.perceptual!r}")
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss must be one of {tuple(DISC_LOSSES)}, got {self.disc_loss!r}")
        if self.disc_start < 0:
            raise ValueError(f"disc_start must be >= 0, got {self.disc_start}")


class TokenizerLoss(nn.Module):
    """Holds the discriminator and the frozen perceptual network; computes both GAN sides.

    Train the generator with `generator_loss` and the discriminator with `discriminator_loss`
    (separate optimizers). Checkpoint `self.discriminator` only: the perceptual network is
    fixed pretrained weights.
    """

    def __init__(self, config: LossConfig, perceptual: PerceptualLoss | None = None):
        super().__init__()
        self.config = config.validate()
        if perceptual is None and config.perceptual != "none":
            perceptual = build_perceptual(config.perceptual)
        if perceptual is not None and config.perceptual != "none" and perceptual.name != config.perceptual:
            raise ValueError(f"config.perceptual is {config.perceptual!r} but a {perceptual.name!r} module was given")
        self.perceptual = None if config.perceptual == "none" else perceptual
        self.discriminator = PatchDiscriminator(base_channels=config.disc_channels, num_layers=config.disc_layers)

    def discriminator_active(self, step: int) -> bool:
        return step >= self.config.disc_start

    def reconstruction_loss(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        if self.config.reconstruction == "l1":
            return F.l1_loss(reconstruction, images)
        return F.mse_loss(reconstruction, images)

    def generator_loss(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        quantizer_loss: torch.Tensor,
        *,
        step: int,
        last_layer: nn.Parameter,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total generator loss and its parts as floats (rec, perceptual, quantizer, g_loss,
        adaptive_weight, total). `last_layer`: the decoder's final conv weight (under DDP,
        the unwrapped module's parameter)."""
        cfg = self.config
        if images.shape != reconstruction.shape:
            raise ValueError(f"images {tuple(images.shape)} and reconstruction {tuple(reconstruction.shape)} differ in shape")
        rec = self.reconstruction_loss(images, reconstruction)
        zero = rec.new_zeros(())
        perceptual = self.perceptual(images, reconstruction).mean() if self.perceptual is not None else zero
        # "nll" in VQGAN's terms: the terms the GAN weight is balanced against
        nll = cfg.reconstruction_weight * rec + cfg.perceptual_weight * perceptual
        total = nll + cfg.quantizer_weight * quantizer_loss
        g_loss, weight = zero, zero
        if self.discriminator_active(step):
            g_loss = generator_adversarial_loss(self.discriminator(reconstruction))
            weight = adaptive_weight(nll, g_loss, last_layer, cfg.disc_weight)
            total = total + weight * g_loss
        logs = {
            "rec": rec.item(),
            "perceptual": perceptual.item(),
            "quantizer": quantizer_loss.item(),
            "g_loss": g_loss.item(),
            "adaptive_weight": weight.item(),
            "total": total.item(),
        }
        return total, logs

    def discriminator_loss(
        self, images: torch.Tensor, reconstruction: torch.Tensor, *, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator loss on real images vs. detached reconstructions; before `disc_start`
        a constant 0 with no graph (skip its backward: see `discriminator_active`)."""
        if not self.discriminator_active(step):
            return images.new_zeros(()), {"d_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        d_loss = DISC_LOSSES[self.config.disc_loss](logits_real, logits_fake)
        logs = {"d_loss": d_loss.item(), "logits_real": logits_real.mean().item(), "logits_fake": logits_fake.mean().item()}
        return d_loss, logs
