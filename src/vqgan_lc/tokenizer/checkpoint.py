"""The inference export: a tokenizer copy that keeps only the projected N x D' codebook.

Saving and loading live in `vqgan_lc/pretrained.py` (one format for every model).
"""
from __future__ import annotations

import copy

import torch


def export_for_inference(model):
    """A copy whose LC quantizer keeps only the projected (N, D') codebook and no projector.

    A 100,000 x 768 fp32 codebook weighs ~307 MB; projected to D'=8 it is ~3.2 MB. Outputs
    are identical (the projection is simply applied once, ahead of time).
    """
    from .model import VQModel

    if model.config.quantizer.kind != "lc":
        raise ValueError(f"export_for_inference applies to LC tokenizers, not kind={model.config.quantizer.kind!r}")
    config = copy.deepcopy(model.config)
    with torch.no_grad():
        projected = model.quantizer.latent_codebook().detach().float().cpu()
    config.quantizer.projector = "none"
    config.quantizer.codebook_dim = config.quantizer.dim
    config.quantizer.train_codebook = False
    config.quantizer.standardize_codebook = False  # the projected entries are stored exactly as they are
    exported = VQModel(config, projected)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
    exported.load_state_dict(state, strict=False)
    exported.provenance = model.gather_provenance()  # the card of the export still names its codebook's origin
    return exported.eval()

