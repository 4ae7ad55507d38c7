"""A small ViT that classifies an image from its token map alone.

The paper fine-tunes a ViT-B on VQGAN-LC token maps (ImageNet top-1 75.7% with LC tokens,
74.1% with FC, 73.8% with EMA) but publishes neither recipe nor code. This is one recipe:
each token becomes a vector, a learned position embedding is added, pre-norm transformer
blocks mix the tokens, and the mean of the final tokens feeds a linear head.

How a token becomes a vector (`embed`):

- "codebook" (default): the token's entry in its tokenizer's codebook, as the decoder sees it
  (the projected entry for LC, the learned entry for VQ/FC/EMA), through one learned linear
  layer and a LayerNorm. The entries are stored with the model (a frozen buffer), so the
  classifier reads exactly what the tokenizer means by each id. Why default: its parameter
  count does not grow with N (a 100,000-entry vocabulary would otherwise need 100,000
  embedding rows, most seen a handful of times in a small labelled set), entries close in
  the latent space start close in the embedding, and an entry never seen in training still
  gets a meaningful vector. It also makes the comparison one of codebooks: a tokenizer whose
  used entries carry more information gives the classifier more to read.
- "index": a learned embedding row per token id, as a language model would; it ignores the
  codebook geometry and measures only what the ids' co-occurrences say.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import Config
from ..pretrained import PretrainedModel

EMBEDDINGS = ("codebook", "index")


@dataclass
class TokenClassifierConfig(Config):
    renamed_fields = {"num_codes": "codebook_size"}  # saved configs of earlier versions still load
    codebook_size: int = 16_384      # vocabulary: the tokenizer's codebook size
    grid: tuple[int, int] = (16, 16)  # token map (h, w)
    num_classes: int = 1000
    embed: str = "codebook"          # "codebook" (entry -> linear, default) | "index" (learned row per id)
    code_dim: int = 8                # width of the tokenizer's latent entries (D'); "codebook" only
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def check(self) -> None:
        if self.embed not in EMBEDDINGS:
            raise ValueError(f"classifier embed must be one of {EMBEDDINGS}, got {self.embed!r}")
        if min(self.codebook_size, self.num_classes, self.code_dim, self.width, self.depth, self.heads) < 1:
            raise ValueError("classifier codebook_size, num_classes, code_dim, width, depth and heads must be positive")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"classifier grid must be two positive numbers (h, w), got {self.grid}")
        if self.width % self.heads:
            raise ValueError(f"classifier width {self.width} must be a multiple of heads {self.heads}")
        if self.mlp_ratio <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"classifier mlp_ratio must be > 0 and dropout in [0, 1), got {self.mlp_ratio}, "
                             f"{self.dropout}")


def _preset(**kw: Any) -> Callable[[], TokenClassifierConfig]:
    return lambda: TokenClassifierConfig(**kw)


CLASSIFIER_PRESETS: dict[str, Callable[[], TokenClassifierConfig]] = {
    # about a minute per tokenizer on a CPU: what `vqgan-lc study --classify` trains for each one
    "vit-micro": _preset(width=64, depth=2, heads=4),
    # minutes on a CPU: the `vqgan-lc classify` default
    "vit-tiny": _preset(width=128, depth=4, heads=4),
    "vit-small": _preset(width=384, depth=12, heads=6),
    # the paper's classifier size (ViT-B: 86M parameters in the transformer)
    "vit-b": _preset(width=768, depth=12, heads=12),
}


def classifier_preset(name: str) -> TokenClassifierConfig:
    if name not in CLASSIFIER_PRESETS:
        raise ValueError(f"unknown classifier preset {name!r}; available: {', '.join(CLASSIFIER_PRESETS)}")
    return CLASSIFIER_PRESETS[name]()


class TokenClassifier(PretrainedModel):
    """Token map (B, h, w) or (B, h*w) of int ids -> class logits (B, num_classes).

    `codes` ("codebook" embedding): the tokenizer's (N, D') latent entries; without them the
    buffer starts at zero until `from_pretrained` or the trainer fills it."""

    model_type = "vqgan-lc-token-classifier"
    no_weight_decay = ("pos_embed",)  # the learned position table is not decayed
    config_class = TokenClassifierConfig
    config: TokenClassifierConfig

    def __init__(self, config: TokenClassifierConfig, codes: torch.Tensor | None = None):
        super().__init__(config)
        c = config
        if c.embed == "codebook":
            self.register_buffer("codes", torch.zeros(c.codebook_size, c.code_dim))
            # The LayerNorm puts every tokenizer's entries on one scale: learned VQGAN entries
            # and projected LC entries live at very different norms.
            self.token_embed = nn.Sequential(nn.Linear(c.code_dim, c.width), nn.LayerNorm(c.width))
            if codes is not None:
                self.set_codes(codes)
        else:
            if codes is not None:
                raise ValueError("codes are used by embed='codebook' only; leave them out for embed='index'")
            self.token_embed = nn.Embedding(c.codebook_size, c.width)
            nn.init.normal_(self.token_embed.weight, std=0.02)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid[0] * c.grid[1], c.width))
        nn.init.normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=int(c.width * c.mlp_ratio),
                                           dropout=c.dropout, activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor only matters for padded batches, which token maps never are
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.num_classes)

    @torch.no_grad()
    def set_codes(self, codes: torch.Tensor) -> None:
        """Store the tokenizer's (N, D') latent entries that the "codebook" embedding reads."""
        if self.config.embed != "codebook":
            raise ValueError("this classifier embeds token ids (embed='index'); it keeps no codebook")
        expected = (self.config.codebook_size, self.config.code_dim)
        if tuple(codes.shape) != expected:
            raise ValueError(f"codebook of shape {tuple(codes.shape)} does not fit this classifier ({expected[0]} x "
                             f"{expected[1]}); build the classifier from the tokenizer that made the tokens")
        self.codes.copy_(codes.detach().float().to(self.codes.device))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h*w) ids -> (B, h*w, width) token vectors."""
        if self.config.embed == "codebook":
            return self.token_embed(nn.functional.embedding(tokens, self.codes))
        return self.token_embed(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.config.grid
        if tokens.ndim == 3:
            tokens = tokens.flatten(1)
        if tokens.ndim != 2 or tokens.shape[1] != h * w:
            raise ValueError(f"expected token maps of shape (B, {h}, {w}) or (B, {h * w}), got {tuple(tokens.shape)}")
        if tokens.is_floating_point():
            raise ValueError(f"token ids must be integers, got {tokens.dtype}")
        tokens = tokens.long()
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.config.codebook_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]; was the map made by another tokenizer?")
        x = self.blocks(self.embed(tokens) + self.pos_embed)
        return self.head(self.norm(x).mean(dim=1))
