"""Classifier-free guidance shared by every generator.

One batched forward runs the conditional and the unconditional halves together (the null
class is the id `num_classes`), then the guided output is uncond + scale * (cond - uncond)
on **every** channel of the prediction by default. The reference DiT-LC and SiT-LC code guided
only the first 3 of its 8 latent channels (a leftover of DiT's 4-channel VAE); the samplers take
`guided_channels=3` to reproduce that, and the unguided channels come from the conditional pass.
Models with a learned variance return 2C channels: the variance half is taken from the
conditional pass, as in DiT, and only the mean/eps/velocity half is guided.
"""
from __future__ import annotations

from typing import Callable

import torch


def with_null_labels(labels: torch.Tensor, null_label: int) -> torch.Tensor:
    """[labels; null, null, ...]: the label batch of one conditional + unconditional forward."""
    return torch.cat([labels, torch.full_like(labels, null_label)])


def guided(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
           scale: float, null_label: int, guided_channels: int | None = None) -> torch.Tensor:
    """model(x, t, labels) with classifier-free guidance at `scale` (1.0: the conditional output).

    `guided_channels`: how many leading output channels are guided (all when None); the rest
    (a learned variance) come from the conditional half.
    """
    if scale == 1.0:
        return model(x, t, labels)
    out = model(torch.cat([x, x]), torch.cat([t, t]), with_null_labels(labels, null_label))
    cond, uncond = out.chunk(2)
    c = cond.shape[1] if guided_channels is None else guided_channels
    if not 1 <= c <= cond.shape[1]:
        raise ValueError(f"guided_channels must lie in [1, {cond.shape[1]}] (the model's output channels), got {c}")
    mixed = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([mixed, cond[:, c:]], dim=1) if c < cond.shape[1] else mixed
