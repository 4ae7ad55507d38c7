"""Generators on VQGAN-LC tokens and latents: GPT on token ids; DiT, SiT and LDM on the
continuous latents, snapped to the codebook at decode."""
