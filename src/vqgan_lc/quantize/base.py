"""What every quantizer shares: flatten, search, look up, straight-through (or rotation), loss, usage counts.

A subclass only says what its codebook looks like in the latent space (`latent_codebook`)
and, for EMA, how the codebook moves. Gradients reach trainable codebooks/projectors through
the lookup of the chosen entries (`F.embedding`), never through the argmin.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import renamed
from .config import QuantizerConfig
from .search import codebook_sq_norms, nearest_codes
from .usage import code_counts


class Unpackable:
    """Lets an output dataclass unpack like a tuple of the fields named in `_unpack`, in that
    order, while keeping attribute access (`out.indices`) and keyword construction.

    Users of diffusers and vector-quantize-pytorch write `quantized, indices, loss = vq(z)`;
    a NamedTuple would allow that too but would also make every field positional forever and
    compare equal to plain tuples, so the dataclasses stay dataclasses and only iterate.
    """

    _unpack: tuple[str, ...] = ()

    def __iter__(self):
        return (getattr(self, name) for name in self._unpack)

    def __len__(self) -> int:
        return len(self._unpack)

    def __getitem__(self, index):
        return tuple(self)[index]


@dataclass
class QuantizerOutput(Unpackable):
    """What a quantizer returns. Unpacks as three values, in the order vector-quantize-pytorch
    uses: `quantized, indices, loss = quantizer(z)` (also `out[0]`, `out[1]`, `out[2]`).
    `counts` is not part of the tuple, so that three-name unpacking keeps working; read it as
    the attribute `out.counts`."""

    _unpack = ("quantized", "indices", "loss")

    quantized: torch.Tensor   # (B, D', H, W) forward = entries; backward to z: identity (straight-through) or rotated
    indices: torch.Tensor     # (B, H, W) int64
    loss: torch.Tensor        # scalar: alpha*||sg(zq)-z||^2 + beta*||zq-sg(z)||^2 (EMA: alpha term only)
    counts: torch.Tensor      # (N,) int64 usage counts of this batch (bincount)


def rotate_onto(z: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows of `target` (M, D), each written as `scale * R @ z` with R and scale held constant
    (the rotation trick, Fifty et al. 2024): R is the rotation in the plane of z and its target
    that turns z's direction into the target's, scale = |target| / |z|.

    Forward: `target` up to rounding. Backward: the gradient at the output reaches z rotated
    back and scaled, instead of copied as it is by the straight-through estimator. R is never
    built: with u = z/|z|, t = target/|target| and w = (u + t)/|u + t|,
    R x = x - 2 (x.w) w + 2 (x.u) t, a reflection through w's normal and one through t's.
    """
    z_norm = z.detach().norm(dim=1, keepdim=True)
    t_norm = target.norm(dim=1, keepdim=True)
    u = z.detach() / z_norm.clamp_min(eps)
    t = target / t_norm.clamp_min(eps)
    w = u + t
    w = w / w.norm(dim=1, keepdim=True).clamp_min(eps)
    rotated = z - 2 * (z * w).sum(1, keepdim=True) * w + 2 * (z * u).sum(1, keepdim=True) * t
    rotated = rotated * (t_norm / z_norm.clamp_min(eps))
    # a z of (nearly) zero length has no direction to rotate: its row falls back to straight-through
    return torch.where(z_norm > eps, rotated, z + (target - z).detach())


class Quantizer(nn.Module, ABC):
    """Base class: z (B, D', H, W) -> QuantizerOutput."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- what subclasses define -------------------------------------------------------------
    @abstractmethod
    def latent_codebook(self) -> torch.Tensor:
        """(N, D') entries in the latent space (projected for LC), with autograd where trainable."""

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Hook for cosine codes (FC with l2 normalisation): identity by default."""
        return z

    def update_codebook(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        """Hook for codebooks that move without gradients (EMA)."""

    # --- shared machinery --------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """N: the number of codebook entries (token ids lie in [0, N))."""
        return self.config.codebook_size

    num_codes = renamed("codebook_size", "num_codes")

    @property
    def dim(self) -> int:
        return self.config.dim

    def train(self, mode: bool = True) -> "Quantizer":
        self._cache = None  # weights may change again: drop the cached projected codebook
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() invalidate the cache too
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def fp32_latent_codebook(self) -> torch.Tensor:
        """`latent_codebook()` computed in fp32 even under autocast (the search must stay fp32)."""
        with torch.autocast(device_type="cuda", enabled=False), torch.autocast(device_type="cpu", enabled=False):
            return self.latent_codebook().float()

    def search_codebook(self, latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached fp32 latent codebook and its squared norms; cached while in eval mode.

        `latent`: the step's `fp32_latent_codebook()` when the caller already computed it,
        so a training step projects the (N, C) codebook once, not twice.
        """
        if self._cache is not None and not self.training:
            return self._cache
        with torch.no_grad():
            latent = self.fp32_latent_codebook() if latent is None else latent.detach()
            entries = self.normalize(latent).contiguous()
            norms = codebook_sq_norms(entries)
        if not self.training:
            self._cache = (entries, norms)
        return entries, norms

    def search(self, z_flat: torch.Tensor, prepared: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Indices (M,) of the nearest entries to rows of z_flat (M, D'); memory-bounded, no autograd."""
        entries, norms = prepared if prepared is not None else self.search_codebook()
        metric = "cosine" if self.config.l2_normalize else "l2"
        indices, _ = nearest_codes(z_flat.detach(), entries, codebook_sq_norms=norms, metric=metric,
                                   memory_budget_mb=self.config.memory_budget_mb,
                                   backend=self.config.search_backend)
        return indices

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"quantizer expects z of shape (B, {self.dim}, H, W), got {tuple(z.shape)}")
        b, _, h, w = z.shape
        z_flat = self.normalize(rearrange(z, "b d h w -> (b h w) d"))
        # Training: one projection per step, with autograd, shared by the search and the lookup
        # (gradients reach the projector / trainable codebook through the lookup). Eval: cached.
        codebook = self.fp32_latent_codebook() if self.training else None
        prepared = self.search_codebook(codebook)
        indices = self.search(z_flat, prepared)
        lookup = codebook if codebook is not None else prepared[0]
        zq_flat = self.normalize(F.embedding(indices, lookup)).to(z_flat.dtype)
        if self.training:
            self.update_codebook(z_flat.detach(), indices)
        loss = self.loss(z_flat, zq_flat)
        if z_flat.requires_grad:
            # Straight-through estimator or rotation trick. Without autograd the entries are
            # returned as they are, so decode(quantized) equals decode_indices(indices) bit for bit.
            if self.config.gradient == "rotation":
                zq_flat = rotate_onto(z_flat, zq_flat.detach())
            else:
                zq_flat = z_flat + (zq_flat - z_flat).detach()
        quantized = rearrange(zq_flat, "(b h w) d -> b d h w", b=b, h=h, w=w)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, code_counts(indices, self.codebook_size))

    def loss(self, z_flat: torch.Tensor, zq_flat: torch.Tensor) -> torch.Tensor:
        """alpha*||sg(zq)-z||^2 + beta*||zq-sg(z)||^2: (alpha + beta) x MSE in value, in every mode.

        The two terms have the same value and differ only in where their gradient goes. Where
        no gradient can reach the entries (eval, no_grad, a frozen codebook) the codebook term
        keeps its value without a graph, so evaluation reports the number training does.
        """
        cfg = self.config
        commit = F.mse_loss(z_flat, zq_flat.detach())
        codebook = F.mse_loss(zq_flat, z_flat.detach()) if zq_flat.requires_grad else commit.detach()
        return cfg.alpha * commit + cfg.beta * codebook

    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) indices -> (B, D', H, W) latents, exactly what `forward` would feed the decoder."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        # The range check reads values back to Python, which breaks a torch.compile graph in
        # two (and syncs a GPU), so compiled code skips it; eager calls keep the clear error.
        if (not torch.compiler.is_compiling() and indices.numel()
                and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size)):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        entries = self.search_codebook()[0]
        latents = F.embedding(indices.long(), entries)
        return rearrange(latents, "b h w d -> b d h w")
