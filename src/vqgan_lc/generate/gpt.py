"""Class-conditional GPT on VQGAN-LC token ids (the paper's "GPT-404M" generator).

Vocabulary of the embedding table (one table, as in the paper):

    [0, N)        image tokens (codebook ids)
    N + c         class c, for c in [0, C)
    N + C         the null class (classifier-free guidance)

A sample is the sequence [class token, image token 0, ..., image token L-2]; position j
predicts image token j (raster order), so the L image tokens are the L outputs of an
L-long input. The output head scores only the N image ids: a class token is never a target.

    model = GPT(gpt_config("gpt-tiny", vocab_size=16384, num_classes=1000, block_size=256))
    loss, logs = model.training_loss(tokens, labels)        # tokens (B, 256), labels (B,)
    ids = model.generate(labels, cfg_scale=2.0)              # (B, 256) image ids

The model knows no files or tokenizers: ids in, ids out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..pretrained import PretrainedModel
from .guidance import with_null_labels
from .sampling import cfg_logits, sample_next


# ----------------------------------------------------------------------------- config

@dataclass
class GPTConfig(Config):
    vocab_size: int = 16384        # N: image-token ids [0, N) (the tokenizer's codebook size)
    num_classes: int = 1000        # C: class ids become tokens N..N+C-1; N+C is the null class
    block_size: int = 256          # image tokens per sample (16x16 for f16 at 256 px; 64 for 8x8)
    n_layer: int = 24              # transformer blocks (defaults: the paper's GPT-404M)
    n_head: int = 16               # attention heads; n_embd must divide evenly by it
    n_embd: int = 1024             # width of the residual stream
    mlp_ratio: float = 4.0         # MLP hidden width = mlp_ratio * n_embd
    dropout: float = 0.0           # dropout on embeddings, attention weights and residual branches
    bias: bool = False             # biases in linear layers and LayerNorm (off: a little faster, no worse)
    norm: str = "rmsnorm"          # "rmsnorm" | "layernorm" (pre-norm in every block, one at the end)
    # RoPE by default: it encodes relative offsets inside attention, so no position table is
    # tied to one grid size (a model trained at 16x16 has no 8x8-specific rows), and it is
    # what LlamaGen uses for its class-conditional GPTs. "learned" is the GPT-2 absolute table.
    positions: str = "rope"        # "rope" | "learned"
    rope_base: float = 10000.0     # RoPE frequency base
    class_dropout: float = 0.1     # training: labels replaced by the null class, for CFG at sampling
    token_corruption: float = 0.2  # training: input image tokens replaced by random ids (paper: 20%)
    loss_chunk: int = 4096         # rows of logits materialised at once in the loss (memory vs speed)

    POSITIONS = ("rope", "learned")
    NORMS = ("rmsnorm", "layernorm")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def null_class(self) -> int:
        return self.num_classes

    def check(self) -> None:
        sizes = ("vocab_size", "num_classes", "block_size", "n_layer", "n_head", "n_embd", "loss_chunk")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"gpt {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"gpt n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.positions not in self.POSITIONS:
            raise ValueError(f"gpt positions must be one of {', '.join(self.POSITIONS)}, got {self.positions!r}")
        if self.norm not in self.NORMS:
            raise ValueError(f"gpt norm must be one of {', '.join(self.NORMS)}, got {self.norm!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"gpt with rope needs an even head size, got n_embd/n_head={self.head_dim}; "
                             "change n_head or n_embd")
        if self.positions == "rope" and not self.rope_base > 1.0:
            raise ValueError(f"gpt rope_base must be > 1, got {self.rope_base}")
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.n_embd) < 1:
            raise ValueError(f"gpt mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("dropout", "class_dropout", "token_corruption"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"gpt {name} must lie in [0, 1), got {value}")


# name -> (n_layer, n_head, n_embd). Parameter counts grow with N too: the embedding table
# and the head each hold about N x n_embd weights (2 x 100M at N = 100,000, width 1024).
GPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "gpt-tiny": (4, 4, 128),       # CPU tests and benchmarks
    "gpt-small": (8, 8, 512),
    "gpt-base": (12, 12, 768),
    "gpt-404m": (24, 16, 1024),    # the paper's generator
}


def gpt_config(preset: str, *, vocab_size: int, num_classes: int, block_size: int, **overrides: Any) -> GPTConfig:
    """A validated GPTConfig of a named architecture; `overrides` set any other field."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown gpt preset {preset!r}; available: {', '.join(GPT_PRESETS)}")
    n_layer, n_head, n_embd = GPT_PRESETS[preset]
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    arch = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, **overrides}
    return GPTConfig(vocab_size=vocab_size, num_classes=num_classes, block_size=block_size, **arch).validate()


# ----------------------------------------------------------------------------- chunked loss

class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` without ever holding all the logits.

    At N = 100,000 the full logits of 2,048 rows are 0.8 GB in fp32, and F.cross_entropy keeps
    two or three such tensors alive through backward. Here the forward keeps only each row's
    logsumexp; the backward recomputes each chunk's logits (one extra matmul) and turns them in
    place into softmax - onehot, so at most `chunk x N` fp32 logits exist at any time.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        rows = hidden.shape[0]
        # Autocast would run the matmuls in bf16/fp16; logits of a 100K vocabulary need fp32.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h, w = hidden.float(), weight.float()
            lse = torch.empty(rows, dtype=torch.float32, device=hidden.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                logits = h[start:stop] @ w.T
                target_logit = logits.gather(1, targets[start:stop, None]).squeeze(1)
                # logsumexp by hand, in place: torch.logsumexp would allocate a second chunk x N.
                peak = logits.amax(dim=1)
                sums = logits.sub_(peak[:, None]).exp_().sum(dim=1)
                lse[start:stop] = peak + sums.log()
                total += (lse[start:stop] - target_logit).sum()
                del logits
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        return total / rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, chunk = hidden.shape[0], ctx.chunk
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h, w = hidden.float(), weight.float()
            scale = grad_loss.float() / rows
            grad_hidden = torch.empty_like(h) if need_hidden else None
            grad_weight = torch.zeros_like(w) if need_weight else None
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                # d(mean CE)/d(logits) = (softmax - onehot) / rows, built in the logits' own buffer:
                # exp(logits - lse) is the softmax, then 1 is subtracted at each row's target.
                probs = (h[start:stop] @ w.T).sub_(lse[start:stop, None]).exp_()
                probs[torch.arange(stop - start, device=probs.device), targets[start:stop]] -= 1.0
                probs.mul_(scale)
                if need_hidden:
                    grad_hidden[start:stop] = probs @ w
                if need_weight:
                    grad_weight.addmm_(probs.T, h[start:stop])
                del probs
        return (None if grad_hidden is None else grad_hidden.to(hidden.dtype),
                None if grad_weight is None else grad_weight.to(weight.dtype), None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int = 4096) -> torch.Tensor:
    """Mean over rows of cross_entropy(hidden @ weight.T, targets), `chunk` rows of logits at a time.

    hidden (M, D), weight (N, D), targets (M,) int64 in [0, N) -> fp32 scalar. Same value and
    gradients as F.cross_entropy on the full (M, N) logits; computed in fp32 under autocast.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"chunked_cross_entropy needs hidden (M, D) and weight (N, D), got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"chunked_cross_entropy needs int64 targets of shape ({hidden.shape[0]},), got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("chunked_cross_entropy got no rows; the mean of an empty batch is undefined")
    if chunk < 1:
        raise ValueError(f"chunked_cross_entropy chunk must be a positive number of rows, got {chunk}")
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, int(chunk))


# ----------------------------------------------------------------------------- building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: the mean of squares of bf16 activations loses precision.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) by per-position angles; cos/sin are (T, hd/2) fp32.

    The two halves of the head dimension form the (real, imaginary) pairs, so no interleaving
    or complex dtype is needed.
    """
    half = x.shape[-1] // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class KVCache:
    """Keys and values of one attention layer for positions [0, max_len), filled as decoding goes.

    The storage is allocated on the first `append`, with the dtype and device of the keys it
    receives, so the same cache works under autocast or for a bf16 model.
    """

    def __init__(self, batch: int, n_head: int, head_dim: int, max_len: int):
        self.shape = (batch, n_head, max_len, head_dim)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at positions start..start+T-1; return all keys/values up to there."""
        stop = start + k.shape[2]
        if k.shape[0] != self.shape[0] or stop > self.shape[2]:
            raise ValueError(f"KV cache holds {self.shape[0]} rows x {self.shape[2]} positions; got "
                             f"{k.shape[0]} rows at positions {start}..{stop - 1}: make a new cache")
        if self.keys is None:
            self.keys = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.values = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        self.keys[:, :, start:stop] = k
        self.values[:, :, start:stop] = v
        return self.keys[:, :, :stop], self.values[:, :, :stop]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, start: int) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            # Rotate before caching: a cached key keeps the angle of its own position.
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v, start)
        keys = k.shape[2]
        mask, causal = None, False
        if length > 1 and keys == length:
            causal = True                        # the usual square causal mask
        elif length > 1:
            # Several new queries after a cached prefix: query i (position start+i) sees keys
            # 0..start+i. SDPA's is_causal would align the mask to the top-left corner instead.
            query_pos = torch.arange(start, start + length, device=x.device)
            mask = query_pos[:, None] >= torch.arange(keys, device=x.device)[None, :]
        # length == 1: the single new query may see every cached key; no mask needed.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(batch, length, width)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.norm2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, rope, cache, start):
        x = x + self.attn(self.norm1(x), rope, cache, start)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------- model

class GPT(PretrainedModel):
    """Decoder-only transformer over [class token, image tokens]; see the module docstring."""
    config: GPTConfig  # the validated config this model was built from

    model_type = "vqgan-lc-gpt"
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        cfg = self.config
        self.embed = nn.Embedding(cfg.vocab_size + cfg.num_classes + 1, cfg.n_embd)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # RoPE angles are derived, not learned: kept out of the state dict (a non-persistent
        # buffer could not be restored by from_pretrained's meta-device loading), computed on
        # first use per device and reused. A plain dict is invisible to nn.Module.
        self._rope_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.apply(self._init_weights)
        # GPT-2's scaling: each residual branch adds to the stream 2 x n_layer times in all,
        # so its output projection starts smaller to keep the stream's variance bounded.
        for name, param in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # -- positions and sequences

    def _rope(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._rope_tables:
            cfg = self.config
            # Built outside inference mode, so a table first made while sampling can still be
            # saved for backward in a later training step.
            with torch.inference_mode(False), torch.no_grad():
                exponent = torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim
                inv_freq = cfg.rope_base ** -exponent
                angles = torch.outer(torch.arange(cfg.block_size, device=device, dtype=torch.float32), inv_freq)
                self._rope_tables[device] = (angles.cos(), angles.sin())
        cos, sin = self._rope_tables[device]
        return cos[start:start + length], sin[start:start + length]

    def sequence_ids(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[N + label, tokens...]: (B, L') image ids and (B,) labels -> (B, L'+1) vocabulary ids."""
        if tokens.dim() != 2 or labels.shape != (tokens.shape[0],):
            raise ValueError(f"GPT expects tokens (B, L) and labels (B,), got {tuple(tokens.shape)} and "
                             f"{tuple(labels.shape)}")
        class_ids = (labels.long() + self.config.vocab_size)[:, None]
        return torch.cat([class_ids, tokens.long()], dim=1)

    def new_cache(self, batch: int) -> list[KVCache]:
        """Empty per-layer KV caches for `batch` rows and the full block_size positions."""
        cfg = self.config
        return [KVCache(batch, cfg.n_head, cfg.head_dim, cfg.block_size) for _ in range(cfg.n_layer)]

    # -- forward paths

    def hidden_states(self, ids: torch.Tensor, *, cache: list[KVCache] | None = None, start: int = 0) -> torch.Tensor:
        """Final-norm hidden states (B, T, n_embd) of vocabulary ids (B, T) at positions start..start+T-1.

        With `cache`, keys/values of earlier positions come from it and this call's are added:
        decoding feeds one new id per step with start = number of ids already seen.
        """
        batch, length = ids.shape
        if start < 0 or start + length > self.config.block_size:
            raise ValueError(f"GPT positions {start}..{start + length - 1} fall outside block_size="
                             f"{self.config.block_size}; pass at most block_size - 1 image tokens")
        x = self.embed(ids)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(start, start + length, device=ids.device))
        else:
            rope = self._rope(start, length, ids.device)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, None if cache is None else cache[i], start)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """tokens (B, L') image ids, labels (B,) in [0, C] (C = null) -> hidden (B, L'+1, n_embd).

        Row j of the output predicts image token j. L' <= block_size - 1.
        """
        return self.hidden_states(self.sequence_ids(tokens, labels))

    def logits(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """fp32 logits (B, L'+1, N) over image ids; row j scores image token j."""
        return self.head(self(tokens, labels)).float()

    # -- training

    def prepare_inputs(self, tokens: torch.Tensor, labels: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-mode augmentation: class dropout and token corruption; eval mode: unchanged.

        Labels become the null class with probability `class_dropout` (so the model also learns
        the unconditional distribution CFG needs); each image token is replaced by a uniformly
        random id with probability `token_corruption` (the paper's 20%: the model learns to
        continue from imperfect prefixes, as its own samples are). Targets stay the clean tokens.
        """
        cfg = self.config
        if not self.training:
            return tokens, labels
        if cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, generator=generator, device=labels.device) < cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, cfg.null_class), labels)
        if cfg.token_corruption > 0:
            hit = torch.rand(tokens.shape, generator=generator, device=tokens.device) < cfg.token_corruption
            noise = torch.randint(0, cfg.vocab_size, tokens.shape, generator=generator, device=tokens.device)
            tokens = torch.where(hit, noise, tokens)
        return tokens, labels

    def training_loss(self, tokens: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy of image tokens (B, L) given labels (B,) -> (scalar loss, logs).

        In training mode the inputs are augmented (see `prepare_inputs`); the targets never are.
        """
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.config.block_size:
            raise ValueError(f"GPT training_loss needs tokens (B, L) with 1 <= L <= block_size="
                             f"{self.config.block_size}, got {tuple(tokens.shape)}")
        tokens, labels = tokens.long(), labels.long()
        inputs, cond = self.prepare_inputs(tokens, labels, generator)
        hidden = self(inputs[:, :-1], cond)                       # (B, L, n_embd)
        loss = chunked_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.head.weight,
                                     tokens.reshape(-1), self.config.loss_chunk)
        changed = inputs[:, :-1] != tokens[:, :-1]
        logs = {
            "loss": loss.item(),
            "corrupted_fraction": changed.float().mean().item() if changed.numel() else 0.0,
            "null_label_fraction": (cond == self.config.null_class).float().mean().item(),
        }
        return loss, logs

    # -- sampling

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0, use_cache: bool = True,
                 generator: torch.Generator | None = None, batch_size: int | None = None) -> torch.Tensor:
        """Sample image ids (B, block_size) int64 for labels (B,) in [0, C] (C: unconditional).

        top_k None is the paper's 10% of the vocabulary; top_k 0 disables it. cfg_scale != 1 runs
        conditional and null-label rows in one batch and mixes their logits; at 1 only the
        conditional rows run. use_cache=False recomputes the whole prefix every step (the
        same samples up to float rounding, slower). batch_size splits the labels into groups sampled one after another
        (to bound memory); the generator, if any, must live on the model's device.
        """
        cfg = self.config
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) <= cfg.num_classes):
            raise ValueError(f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} is the null class), "
                             f"got {int(labels.min())}..{int(labels.max())}")
        if top_k is None:
            top_k = max(1, cfg.vocab_size // 10)
        if top_k < 0 or top_k > cfg.vocab_size:
            raise ValueError(f"top_k must lie in [0, {cfg.vocab_size}] (0: off), got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of samples, got {batch_size}")
        was_training = self.training
        self.eval()                     # dropout off: cached and uncached sampling must agree
        try:
            step = batch_size or max(1, labels.numel())
            groups = [self._sample(labels[i:i + step], temperature, top_k, top_p, cfg_scale, use_cache, generator)
                      for i in range(0, labels.numel(), step)]
        finally:
            self.train(was_training)
        if not groups:
            return torch.empty(0, cfg.block_size, dtype=torch.long, device=self.device)
        return torch.cat(groups)

    def _sample(self, labels, temperature, top_k, top_p, cfg_scale, use_cache, generator) -> torch.Tensor:
        cfg = self.config
        batch = labels.shape[0]
        guided = cfg_scale != 1.0
        rows = with_null_labels(labels, cfg.null_class) if guided else labels
        out = torch.empty(batch, cfg.block_size, dtype=torch.long, device=labels.device)
        class_ids = (rows + cfg.vocab_size)[:, None]
        cache = self.new_cache(rows.shape[0]) if use_cache else None
        if use_cache:
            hidden = self.hidden_states(class_ids, cache=cache, start=0)
        for i in range(cfg.block_size):
            if not use_cache:
                prefix = out[:, :i].repeat(2, 1) if guided else out[:, :i]
                hidden = self.hidden_states(torch.cat([class_ids, prefix], dim=1))
            # Only the last position is scored: the head is N wide, the costliest matmul per step.
            logits = self.head(hidden[:, -1]).float()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = cfg_logits(cond, uncond, cfg_scale)
            out[:, i] = sample_next(logits, temperature, top_k, top_p, generator)
            if use_cache and i + 1 < cfg.block_size:
                new = out[:, i:i + 1]
                hidden = self.hidden_states(new.repeat(2, 1) if guided else new, cache=cache, start=i + 1)
        return out
