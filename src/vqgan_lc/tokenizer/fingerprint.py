"""A tokenizer's fingerprint: what decides the images it makes of latents and token ids.

Caches record the fingerprint of the tokenizer that encoded them; generator runs and pipeline
folders carry it, and decoding with a tokenizer of another fingerprint is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..pretrained import PROVENANCE_KEY, WEIGHTS_NAME, read_config_file


def tokenizer_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 of the tokenizer's encoding config and of its weights file: equal exactly when the
    tokenizer turns latents and token ids into the same images. The latent statistics a user may
    have stored in the config (latent_scale) and provenance notes are left out."""
    folder = Path(folder)
    config = {k: v for k, v in read_config_file(folder).items() if k not in ("latent_scale", PROVENANCE_KEY)}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a tokenizer folder holds config.json and {WEIGHTS_NAME}")
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
