"""Generator commands (GPT on token ids; DiT, SiT and LDM on latents)."""
from __future__ import annotations


def register(sub) -> None:
    """Generator commands join here as they are built; `presets` lists the architectures today."""


def list_generator_presets() -> None:
    from ..generate.dit import DIT_PRESETS
    from ..generate.gpt import GPT_PRESETS
    from ..generate.unet import UNET_PRESETS

    print("generator presets:")
    print("  gpt (class-conditional, token ids):", ", ".join(GPT_PRESETS))
    print("  dit / sit (latents, patch 2):      ", ", ".join(DIT_PRESETS))
    print("  ldm (latents, UNet):               ", ", ".join(UNET_PRESETS))
