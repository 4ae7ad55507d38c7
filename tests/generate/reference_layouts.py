"""Released-checkpoint layouts of the reference code (zh460045050/VQGAN-LC), at small widths,
and forward passes written from its files, independent of the package's models.

Shared by the test_reference_*.py modules: each builds a random state dict under the reference's
key names and shapes, so the converters are tested without any download.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vqgan_lc.quantize.config import QuantizerConfig
from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
from vqgan_lc.tokenizer.model import VQModel


def randn(generator: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale


# --------------------------------------------------------------------------- tokenizer

def tokenizer_config(resolution: int = 16, ch_mult=(1, 2, 2), codebook_size: int = 40, dim: int = 4):
    """A small reference-shaped tokenizer: GroupNorm of 32 groups as in the reference's VQGAN."""
    ae = AutoencoderConfig(resolution=resolution, ch=32, ch_mult=ch_mult, num_res_blocks=1,
                           attn_resolutions=(resolution // 2,), z_channels=32, norm_groups=32)
    return TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=codebook_size, dim=dim, codebook_dim=12))


def reference_tokenizer_state(config: TokenizerConfig, seed: int = 5) -> dict[str, torch.Tensor]:
    """Tokenizer weights under the reference's names (tok_embeddings, codebook_projection)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in VQModel(config).state_dict().items():
        name = name.replace("quantizer.codebook", "tok_embeddings.weight").replace("quantizer.projector.",
                                                                                   "codebook_projection.")
        state[name] = randn(g, *value.shape) if value.is_floating_point() else value.clone()
    return state


# --------------------------------------------------------------------------- minGPT (GPT-LC)

def mingpt_state(vocab: int, positions: int, layers: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """taming-transformers' minGPT as VQGANTransformer.transformer (vqgan-gpt-lc/models/models_gpt.py)."""
    g = torch.Generator().manual_seed(seed)
    s = {"tok_emb.weight": randn(g, vocab, width, scale=1.0), "pos_emb": randn(g, 1, positions, width),
         "ln_f.weight": 1 + randn(g, width), "ln_f.bias": randn(g, width), "head.weight": randn(g, vocab, width)}
    for i in range(layers):
        p = f"blocks.{i}."
        for norm in ("ln1", "ln2"):
            s[p + norm + ".weight"], s[p + norm + ".bias"] = 1 + randn(g, width), randn(g, width)
        for name in ("key", "query", "value", "proj"):
            s[p + f"attn.{name}.weight"], s[p + f"attn.{name}.bias"] = randn(g, width, width), randn(g, width)
        s[p + "attn.mask"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = randn(g, 4 * width, width), randn(g, 4 * width)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = randn(g, width, 4 * width), randn(g, width)
    return s


def mingpt_logits(s: dict, ids: torch.Tensor, n_head: int) -> torch.Tensor:
    """minGPT's forward: separate key/query/value, masked softmax attention, exact GELU."""
    b, t = ids.shape
    x = s["tok_emb.weight"][ids] + s["pos_emb"][:, :t]
    width = x.shape[-1]
    layers = len({k.split(".")[1] for k in s if k.startswith("blocks.")})
    for i in range(layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), s[p + "ln1.weight"], s[p + "ln1.bias"])
        heads = [F.linear(h, s[p + f"attn.{n}.weight"], s[p + f"attn.{n}.bias"]).view(b, t, n_head, -1).transpose(1, 2)
                 for n in ("query", "key", "value")]
        q, k, v = heads
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = att.masked_fill(s[p + "attn.mask"][:, :, :t, :t] == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, width)
        x = x + F.linear(y, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), s[p + "ln2.weight"], s[p + "ln2.bias"])
        h = F.linear(F.gelu(F.linear(h, s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])), s[p + "mlp.2.weight"],
                     s[p + "mlp.2.bias"])
        x = x + h
    x = F.layer_norm(x, (width,), s["ln_f.weight"], s["ln_f.bias"])
    return x @ s["head.weight"].T


# --------------------------------------------------------------------------- DiT / SiT

def mae_sincos_table(dim: int, grid: int) -> torch.Tensor:
    """The fixed table of dit-lc/models.py (MAE's get_2d_sincos_pos_embed): meshgrid(w, h), the
    first half of the width coding grid[0], i.e. the column."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None].double() * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    h = torch.arange(grid, dtype=torch.float32)
    w = torch.arange(grid, dtype=torch.float32)
    gw, gh = torch.meshgrid(w, h, indexing="xy")   # numpy's meshgrid(grid_w, grid_h): gw varies along columns
    return torch.cat([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], dim=1).float()


def dit_state(in_channels: int, grid: int, patch: int, width: int, depth: int, classes: int, out_channels: int,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """DiT/SiT of dit-lc/models.py (timm PatchEmbed, Attention with qkv, Mlp fc1/fc2), null class row included."""
    g = torch.Generator().manual_seed(seed)

    def randn(generator, *shape, scale=0.1):   # smaller than elsewhere: guidance at 8 amplifies rounding
        return torch.randn(shape, generator=generator) * scale
    s = {"x_embedder.proj.weight": randn(g, width, in_channels, patch, patch), "x_embedder.proj.bias": randn(g, width),
         "pos_embed": mae_sincos_table(width, grid)[None],
         "t_embedder.mlp.0.weight": randn(g, width, 256), "t_embedder.mlp.0.bias": randn(g, width),
         "t_embedder.mlp.2.weight": randn(g, width, width), "t_embedder.mlp.2.bias": randn(g, width),
         "y_embedder.embedding_table.weight": randn(g, classes + 1, width, scale=1.0),
         "final_layer.adaLN_modulation.1.weight": randn(g, 2 * width, width),
         "final_layer.adaLN_modulation.1.bias": randn(g, 2 * width),
         "final_layer.linear.weight": randn(g, patch * patch * out_channels, width),
         "final_layer.linear.bias": randn(g, patch * patch * out_channels)}
    for i in range(depth):
        p = f"blocks.{i}."
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = randn(g, 3 * width, width), randn(g, 3 * width)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = randn(g, width, width), randn(g, width)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = randn(g, 4 * width, width), randn(g, 4 * width)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = randn(g, width, 4 * width), randn(g, width)
        s[p + "adaLN_modulation.1.weight"], s[p + "adaLN_modulation.1.bias"] = (randn(g, 6 * width, width),
                                                                                randn(g, 6 * width))
    return s


def dit_forward(s: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, n_head: int) -> torch.Tensor:
    """DiT.forward of dit-lc/models.py (SiT's is the same, then keeps the first C channels)."""
    w = s["x_embedder.proj.weight"]
    width, patch = w.shape[0], w.shape[-1]
    tokens = F.conv2d(x, w, s["x_embedder.proj.bias"], stride=patch).flatten(2).transpose(1, 2) + s["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    temb = F.linear(F.silu(F.linear(t_freq, s["t_embedder.mlp.0.weight"], s["t_embedder.mlp.0.bias"])),
                    s["t_embedder.mlp.2.weight"], s["t_embedder.mlp.2.bias"])
    c = temb + s["y_embedder.embedding_table.weight"][y]
    b, n, _ = tokens.shape
    depth = len({k.split(".")[1] for k in s if k.startswith("blocks.")})

    def modulate(h, shift, scale):
        return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    for i in range(depth):
        p = f"blocks.{i}."
        mod = F.linear(F.silu(c), s[p + "adaLN_modulation.1.weight"], s[p + "adaLN_modulation.1.bias"]).chunk(6, dim=1)
        h = modulate(F.layer_norm(tokens, (width,), eps=1e-6), mod[0], mod[1])
        qkv = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(b, n, 3, n_head, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = ((q * k.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = F.linear((att @ v).transpose(1, 2).reshape(b, n, width), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        tokens = tokens + mod[2].unsqueeze(1) * h
        h = modulate(F.layer_norm(tokens, (width,), eps=1e-6), mod[3], mod[4])
        h = F.linear(F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]), approximate="tanh"),
                     s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        tokens = tokens + mod[5].unsqueeze(1) * h
    shift, scale = F.linear(F.silu(c), s["final_layer.adaLN_modulation.1.weight"],
                            s["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)
    out = F.linear(modulate(F.layer_norm(tokens, (width,), eps=1e-6), shift, scale), s["final_layer.linear.weight"],
                   s["final_layer.linear.bias"])
    cout = out.shape[-1] // (patch * patch)
    side = int(n ** 0.5)
    out = out.reshape(b, side, side, patch, patch, cout)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, cout, side * patch, side * patch)


def guided_three(forward, x, t, y, scale, null, channels=3):
    """forward_with_cfg of dit-lc/sit-lc models.py: guidance on the first 3 channels; the rest of
    the conditional half (the reference keeps the first half of the batch)."""
    out = forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
    cond, uncond = out.chunk(2)
    eps = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


# --------------------------------------------------------------------------- LDM (openaimodel UNetModel)

def unet_state(in_channels: int, mc: int, mult: tuple, num_res: int, attention: tuple, context: int, seed: int = 0,
               prefix: str = "") -> dict[str, torch.Tensor]:
    """openaimodel.UNetModel's keys and shapes with use_spatial_transformer, num_head_channels and
    conv_resample (ldm-lc/configs/imagenet-f16-vqgan-lc-100K.yaml), built level by level as it is."""
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        s[f"{prefix}{name}.weight"], s[f"{prefix}{name}.bias"] = randn(g, cout, cin, k, k, scale=0.1), randn(g, cout)

    def linear(name, cout, cin, bias=True):
        s[f"{prefix}{name}.weight"] = randn(g, cout, cin, scale=cin ** -0.5)
        if bias:
            s[f"{prefix}{name}.bias"] = randn(g, cout)

    def norm(name, ch):
        s[f"{prefix}{name}.weight"], s[f"{prefix}{name}.bias"] = 1 + randn(g, ch), randn(g, ch)

    def resblock(name, cin, cout):
        norm(f"{name}.in_layers.0", cin)
        conv(f"{name}.in_layers.2", cout, cin, 3)
        linear(f"{name}.emb_layers.1", cout, 4 * mc)
        norm(f"{name}.out_layers.0", cout)
        conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.skip_connection", cout, cin, 1)

    def transformer(name, ch):
        norm(f"{name}.norm", ch)
        conv(f"{name}.proj_in", ch, ch, 1)
        b = f"{name}.transformer_blocks.0"
        for attn, kv in (("attn1", ch), ("attn2", context)):
            linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
            linear(f"{b}.{attn}.to_k", ch, kv, bias=False)
            linear(f"{b}.{attn}.to_v", ch, kv, bias=False)
            linear(f"{b}.{attn}.to_out.0", ch, ch)
        linear(f"{b}.ff.net.0.proj", 8 * ch, ch)
        linear(f"{b}.ff.net.2", ch, 4 * ch)
        for n in ("norm1", "norm2", "norm3"):
            norm(f"{b}.{n}", ch)
        conv(f"{name}.proj_out", ch, ch, 1)

    linear("time_embed.0", 4 * mc, mc)
    linear("time_embed.2", 4 * mc, 4 * mc)
    conv("input_blocks.0.0", mc, in_channels, 3)
    chans, ch, ds, index = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(num_res):
            resblock(f"input_blocks.{index}.0", ch, m * mc)
            ch = m * mc
            if ds in attention:
                transformer(f"input_blocks.{index}.1", ch)
            chans.append(ch)
            index += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{index}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2
            index += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    index = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(num_res + 1):
            resblock(f"output_blocks.{index}.0", ch + chans.pop(), m * mc)
            ch, j = m * mc, 1
            if ds in attention:
                transformer(f"output_blocks.{index}.1", ch)
                j = 2
            if level and i == num_res:
                conv(f"output_blocks.{index}.{j}.conv", ch, ch, 3)
                ds //= 2
            index += 1
    norm("out.0", ch)
    conv("out.2", in_channels, mc, 3)
    return s


def unet_forward(s: dict, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, head_channels: int = 32):
    """UNetModel.forward: GroupNorm32 (eps 1e-5) in ResBlocks and the output, Normalize (eps 1e-6)
    in SpatialTransformer, CrossAttention with ch / head_channels heads, GEGLU feed-forward."""
    mc = s["input_blocks.0.0.weight"].shape[0]
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, s["time_embed.0.weight"], s["time_embed.0.bias"])), s["time_embed.2.weight"],
                   s["time_embed.2.bias"])

    def gn(h, name, eps):
        return F.group_norm(h.float(), 32, s[name + ".weight"], s[name + ".bias"], eps)

    def res(h, p):
        out = F.conv2d(F.silu(gn(h, p + ".in_layers.0", 1e-5)), s[p + ".in_layers.2.weight"], s[p + ".in_layers.2.bias"],
                       padding=1)
        out = out + F.linear(F.silu(emb), s[p + ".emb_layers.1.weight"], s[p + ".emb_layers.1.bias"])[:, :, None, None]
        out = F.conv2d(F.silu(gn(out, p + ".out_layers.0", 1e-5)), s[p + ".out_layers.3.weight"],
                       s[p + ".out_layers.3.bias"], padding=1)
        skip = (F.conv2d(h, s[p + ".skip_connection.weight"], s[p + ".skip_connection.bias"])
                if p + ".skip_connection.weight" in s else h)
        return skip + out

    def attention(h, ctx, p, heads):
        q = F.linear(h, s[p + ".to_q.weight"])
        k, v = F.linear(ctx, s[p + ".to_k.weight"]), F.linear(ctx, s[p + ".to_v.weight"])
        b, n, _ = q.shape
        q, k, v = (u.reshape(u.shape[0], u.shape[1], heads, -1).permute(0, 2, 1, 3).reshape(b * heads, u.shape[1], -1)
                   for u in (q, k, v))
        sim = torch.einsum("bid,bjd->bij", q, k) * q.shape[-1] ** -0.5
        out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)
        out = out.reshape(b, heads, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        return F.linear(out, s[p + ".to_out.0.weight"], s[p + ".to_out.0.bias"])

    def spatial(h, p):
        b, ch, height, width = h.shape
        heads, tb = ch // head_channels, p + ".transformer_blocks.0"
        z = F.conv2d(gn(h, p + ".norm", 1e-6), s[p + ".proj_in.weight"], s[p + ".proj_in.bias"])
        z = z.flatten(2).transpose(1, 2)
        normed = F.layer_norm(z, (ch,), s[tb + ".norm1.weight"], s[tb + ".norm1.bias"])
        z = z + attention(normed, normed, tb + ".attn1", heads)                 # self-attention: context = x
        z = z + attention(F.layer_norm(z, (ch,), s[tb + ".norm2.weight"], s[tb + ".norm2.bias"]), context,
                          tb + ".attn2", heads)
        value, gate = F.linear(F.layer_norm(z, (ch,), s[tb + ".norm3.weight"], s[tb + ".norm3.bias"]),
                               s[tb + ".ff.net.0.proj.weight"], s[tb + ".ff.net.0.proj.bias"]).chunk(2, dim=-1)
        z = z + F.linear(value * F.gelu(gate), s[tb + ".ff.net.2.weight"], s[tb + ".ff.net.2.bias"])
        z = z.transpose(1, 2).reshape(b, ch, height, width)
        return h + F.conv2d(z, s[p + ".proj_out.weight"], s[p + ".proj_out.bias"])

    def stage(h, p):
        j = 0
        while any(k.startswith(f"{p}.{j}.") for k in s):
            q = f"{p}.{j}"
            if q + ".in_layers.0.weight" in s:
                h = res(h, q)
            elif q + ".proj_in.weight" in s:
                h = spatial(h, q)
            elif q + ".op.weight" in s:
                h = F.conv2d(h, s[q + ".op.weight"], s[q + ".op.bias"], stride=2, padding=1)
            elif q + ".weight" in s:
                h = F.conv2d(h, s[q + ".weight"], s[q + ".bias"], padding=1)
            else:
                h = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), s[q + ".conv.weight"],
                             s[q + ".conv.bias"], padding=1)
            j += 1
        return h

    count = lambda name: len({k.split(".")[1] for k in s if k.startswith(name + ".")})   # noqa: E731
    h, skips = x, []
    for i in range(count("input_blocks")):
        h = stage(h, f"input_blocks.{i}")
        skips.append(h)
    h = stage(h, "middle_block")
    for i in range(count("output_blocks")):
        h = stage(torch.cat([h, skips.pop()], dim=1), f"output_blocks.{i}")
    h = F.silu(gn(h, "out.0", 1e-5))
    return F.conv2d(h, s["out.2.weight"], s["out.2.bias"], padding=1)
