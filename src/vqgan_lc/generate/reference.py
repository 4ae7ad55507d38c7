"""The paper's released generators (GPT-LC, DiT-LC, SiT-LC, LDM-LC) as this package's models,
and the sampling protocol of the reference code for each.

    convert_reference("dit", "dit-lc-100K-f16.pth", "models/dit-lc", tokenizer="vqgan-lc-100K-f16-dim8.pth")
    reference_protocol("ldm", downsample=16)     # what its evaluation script samples with
    sample_reference(dit, "dit", labels)         # latents sampled with those settings

A conversion writes one folder: `generator/` and, when the checkpoint carries its tokenizer
(GPT-LC: `vqgan.*`, LDM-LC: `first_stage_model.*`) or `tokenizer=` names one, `tokenizer/`
(both through `save_pretrained`, their cards naming the source file and its sha256), and
`process.json`: the family and the reference protocol's sampling settings.

What each released file holds, read from the reference repository (zh460045050/VQGAN-LC):
- GPT-LC (vqgan-gpt-lc/models/models_gpt.py): `transformer.*`, taming-transformers' minGPT
  (separate key/query/value, learned positions of 257 rows, LayerNorm, biases, exact GELU;
  tokens 0..N-1 are image ids, N + c is class c) and `vqgan.*`, the tokenizer.
- DiT-LC (dit-lc/train.py): {"model", "ema", "opt", "args"}; DiT's find_model samples with "ema".
- SiT-LC: the same layout; SiT-XL/2 built with learn_sigma, whose variance rows it never uses.
- LDM-LC (ldm-lc/configs/*.yaml): a Lightning "state_dict" with `model.diffusion_model.*`, its
  EMA `model_ema.*` (LitEma: the names without dots; run_evaluations.py samples in ema_scope),
  `cond_stage_model.embedding.weight` (1001 rows, 1000 the null class) and `first_stage_model.*`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json
from ..pretrained import PretrainedModel

FAMILIES = ("gpt", "dit", "sit", "ldm")
GENERATOR_DIR, TOKENIZER_DIR, PROCESS_NAME = "generator", "tokenizer", "process.json"
REPOSITORY = "zh460045050/VQGAN-LC"


# ----------------------------------------------------------------------------- protocols

@dataclass(frozen=True)
class ReferenceProtocol:
    """How the reference evaluation script of one family samples (read from its code)."""

    family: str
    sampler: str                      # ar | ddpm | dopri5 | ddim
    steps: int | None                 # None: adaptive (dopri5) or one per token (ar)
    timestep_grid: str
    eta: float | None
    guidance_scale: float
    guided_channels: int | None       # leading channels guided; None: all
    null_class: int | None
    top_k: int | None                 # the reference script's top-k
    temperature: float | None
    snap: bool                        # latents snapped to the codebook before decoding
    atol: float | None = None
    rtol: float | None = None
    weights: str = "as stored"
    # the top-k our sampler is given, where it differs (0: no filtering, which keeping all ids is)
    sampling_top_k: int | None = None
    # sampler keyword arguments beyond method/steps/guidance that reproduce the reference
    options: dict = field(default_factory=dict)
    # tokenizer downsampling factor -> guidance scale, where the released scripts differ by it
    guidance_by_downsample: dict = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


_PROTOCOLS = {
    "gpt": ReferenceProtocol(
        "gpt", "ar", None, "class token first, then 256 image tokens in raster order", None, 1.0, None, None,
        100_000, 1.0, True, weights="as stored (no EMA)", sampling_top_k=0,
        sources=("vqgan-gpt-lc/eval_generation.py", "vqgan-gpt-lc/runTestGPT.sh", "vqgan-gpt-lc/models/models_gpt.py"),
        notes=("top-k 100,000 keeps every image id (no filtering): the setting of runTestGPT.sh, "
               "with which the reference repository's issue #7 reports FID 24.6",
               "the paper's FID 15.4 is, per the authors' reply in issue #7, obtained with top-k 10,000 "
               "(10% of the vocabulary): pass --top-k 10000 for that",
               "no classifier-free guidance: the model has no null class (one is appended here, never used)")),
    "dit": ReferenceProtocol(
        "dit", "ddpm", 250, "DiT's respacing: 250 of 1000 steps, a stride of 999 / 249 accumulated and rounded", None, 8.0, 3, 1000,
        None, None, True, weights="ema", options={"grid": "dit", "guided_channels": 3},
        sources=("dit-lc/evaluation.py", "dit-lc/runTestDiT.sh", "dit-lc/models.py"),
        notes=("guidance on eps channels 0-2 only (forward_with_cfg); channels 3-7 and the variance come from "
               "the conditional pass", "learned variance; no clipping of x0")),
    "sit": ReferenceProtocol(
        "sit", "dopri5", None, "t from 0 to 1 (linear path, velocity prediction)", None, 8.0, 3, 1000,
        None, None, True, atol=1e-6, rtol=1e-3, weights="ema",
        options={"atol": 1e-6, "rtol": 1e-3, "guided_channels": 3},
        sources=("sit-lc/evaluation.py", "sit-lc/runTestSiT.sh", "sit-lc/models.py"),
        notes=("the network embeds t in [0, 1] as it is (sit_time_scale 1)",
               "guidance on velocity channels 0-2 only")),
    "ldm": ReferenceProtocol(
        "ldm", "ddim", 200, "LDM's uniform DDIM grid 1, 6, ..., 996; the last step ends on alpha_bar of step 0",
        1.0, 1.6, None, 1000, None, None, True, weights="ema",
        options={"eta": 1.0, "grid": "ldm", "final_alpha_bar": "grid"}, guidance_by_downsample={16: 1.6, 8: 1.4},
        sources=("ldm-lc/run_evaluations.py", "ldm-lc/runTestLDM.sh", "ldm-lc/configs/imagenet-f16-vqgan-lc-100K.yaml"),
        notes=("guidance 1.6 for f16, 1.4 for f8 (runTestLDM.sh), on all channels",
               "noise is added at every step, the last included (its sigma is not 0 on this grid)")),
}


def reference_protocol(family: str, *, downsample: int = 16) -> dict[str, Any]:
    """The reference protocol's sampling settings for a family, as plain data.

    `downsample`: the tokenizer's factor, where the released scripts' guidance depends on it
    (LDM: 1.6 for f16, 1.4 for f8 in ldm-lc/runTestLDM.sh; other factors get the f8 one). Keys:
    the `ReferenceProtocol` fields, `repository`, and `request`: the `SampleRequest` fields that
    reproduce it (see `protocol_request`).
    """
    if family not in _PROTOCOLS:
        raise ValueError(f"unknown generator family {family!r}; the reference protocols are {', '.join(_PROTOCOLS)}")
    record = asdict(_PROTOCOLS[family])
    record["sources"], record["notes"] = list(record["sources"]), list(record["notes"])
    by_factor = record.pop("guidance_by_downsample")
    if by_factor:
        record["guidance_scale"] = by_factor.get(downsample, min(by_factor.items())[1])
        if downsample not in by_factor:
            record["notes"].append(f"f{downsample}: the released scripts cover f{' and f'.join(map(str, by_factor))} "
                                   f"only; the f{min(by_factor)} scale is used")
    record["repository"] = REPOSITORY
    record["request"] = {"method": record["sampler"], "steps": record["steps"], "cfg_scale": record["guidance_scale"],
                         "temperature": record["temperature"] or 1.0,
                         "top_k": record["top_k"] if record["sampling_top_k"] is None else record["sampling_top_k"],
                         "options": dict(record["options"])}
    return record


def protocol_request(record: dict, **changes: Any):
    """The `SampleRequest` of a protocol record (`reference_protocol` output, or the copy a
    converted folder's process.json keeps), with single settings changed (e.g. top_k=10000)."""
    from .families import SampleRequest

    fields = {**record["request"], "options": dict(record["request"]["options"])}
    for key, value in changes.items():
        if key in fields:
            fields[key] = value
        else:
            fields["options"][key] = value
    return SampleRequest(**fields)


@torch.no_grad()
def sample_reference(model: PretrainedModel, family: str, labels: torch.Tensor, *,
                     noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     downsample: int = 16, **changes: Any) -> torch.Tensor:
    """Sample `model` as the reference script of `family` does: token ids (B, L) or latents.

    `noise` (B, C, h, w): the starting latents (drawn from `generator` when None); `changes`
    override single settings of the protocol (e.g. top_k).
    """
    from types import SimpleNamespace

    from .families import get_family

    record = get_family(family)
    request = protocol_request(reference_protocol(family, downsample=downsample), **changes)
    labels = torch.as_tensor(labels, dtype=torch.long, device=model.device)
    model.eval()
    c = model.config
    shape = (c.in_channels, c.input_size, c.input_size) if record.data_kind == "latents" else (1, c.block_size)
    process = record.build_process(SimpleNamespace(diffusion_steps=1000))
    drawn = record.sample(model, process, labels, request, shape, generator, noise=noise)
    return drawn.latents if drawn.ids is None else drawn.ids.reshape(len(labels), -1)


# ----------------------------------------------------------------------------- reading checkpoints

def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensors(mapping: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in mapping.items() if isinstance(v, torch.Tensor) and k.startswith(prefix)}


def _unwrap(raw: dict) -> dict[str, torch.Tensor]:
    """The flat state dict of a checkpoint: under "state_dict" (Lightning) or "module" (DeepSpeed),
    or the dict itself; DDP's `module.` prefix removed."""
    for wrapper in ("state_dict", "module"):
        if isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    return {k.removeprefix("module."): v for k, v in _tensors(raw).items()}


def _generator_weights(raw: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict a released file samples with, and which one it is: DiT/SiT train.py
    checkpoints hold "model" and "ema" (find_model takes "ema"); the others one flat dict."""
    if isinstance(raw.get("ema"), dict):
        state, weights = _tensors(raw["ema"]), "ema (the weights find_model samples with)"
    elif isinstance(raw.get("model"), dict):
        state, weights = _tensors(raw["model"]), "model (the file holds no ema)"
    else:
        state, weights = _unwrap(raw), "as stored"
    return {k.removeprefix("module."): v for k, v in state.items()}, weights


_MARKERS = {"gpt": "transformer.tok_emb.weight", "ldm": "model.diffusion_model.input_blocks.0.0.weight",
            "dit": "x_embedder.proj.weight"}
_NAMES = {"gpt": "GPT-LC", "dit": "DiT-LC", "sit": "SiT-LC", "ldm": "LDM-LC", "dit|sit": "DiT-LC or SiT-LC"}


def _family_of(state: dict, args: dict) -> str | None:
    """gpt, dit, sit or ldm; "dit|sit" when the weights are DiT-shaped and no saved argument tells
    which (the two share one network)."""
    for family, marker in _MARKERS.items():
        if marker in state:
            if family == "dit":
                model = str(args.get("model", ""))
                if model.startswith("SiT") or "path_type" in args:
                    return "sit"
                return "dit" if model.startswith("DiT") else "dit|sit"
            return family
    return None


def _check_family(requested: str, found: str | None, source: str) -> None:
    if found is None:
        raise ValueError(f"{source} holds none of the released generators' weights (no transformer.tok_emb, "
                         "x_embedder or model.diffusion_model keys); is it a tokenizer checkpoint?")
    if found == requested or (found == "dit|sit" and requested in ("dit", "sit")):
        return
    if {found, requested} == {"dit", "sit"}:
        raise ValueError(f"{source} was trained as {_NAMES[found]} (its saved arguments say so), not "
                         f"{_NAMES[requested]}; use `vqgan-lc convert reference-{found}`")
    command = "reference-dit or reference-sit" if found == "dit|sit" else f"reference-{found}"
    raise ValueError(f"{source} holds a {_NAMES[found]} checkpoint, not {_NAMES[requested]}; "
                     f"use `vqgan-lc convert {command}`")


def _need(state: dict, keys: list[str], source: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} weight(s) the reference model has, e.g. {missing[0]}; "
                         "the file is incomplete or from another model")


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise ValueError(f"the blocks matching {pattern!r} are not numbered 0..n-1: the checkpoint is incomplete")
    return len(found)


# ----------------------------------------------------------------------------- GPT-LC

def gpt_from_reference_state(state: dict[str, torch.Tensor], num_image_ids: int, *, n_head: int = 16,
                             source: str = "state dict"):
    """Our GPT from minGPT weights (keys without the `transformer.` prefix).

    `num_image_ids`: N, the tokenizer's codebook size; the rest of the vocabulary is the class
    tokens. `n_head` is not in the shapes: the reference builds 16 heads.
    """
    from .gpt import GPT, GPTConfig

    _need(state, ["tok_emb.weight", "pos_emb", "ln_f.weight", "ln_f.bias", "head.weight"], source)
    vocab, width = state["tok_emb.weight"].shape
    num_classes = vocab - num_image_ids
    if num_classes < 1:
        raise ValueError(f"{source}: a vocabulary of {vocab} ids matches no class count with {num_image_ids} image "
                         "ids (the tokenizer's codebook size); pass the tokenizer this GPT was trained with")
    if state["head.weight"].shape[0] != vocab:
        raise ValueError(f"{source}: the head scores {state['head.weight'].shape[0]} ids but the embedding has "
                         f"{vocab}; the file is damaged or not a minGPT checkpoint")
    layers = _count(state, r"blocks\.(\d+)\.")
    _need(state, [f"blocks.{i}.{part}" for i in range(layers) for part in (
        "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "attn.query.weight", "attn.query.bias", "attn.key.weight",
        "attn.key.bias", "attn.value.weight", "attn.value.bias", "attn.proj.weight", "attn.proj.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")], source)
    positions = state["pos_emb"].shape[1]
    config = GPTConfig(vocab_size=num_image_ids, num_classes=num_classes, block_size=positions - 1, n_layer=layers,
                       n_head=n_head, n_embd=width, mlp_ratio=state["blocks.0.mlp.0.weight"].shape[0] / width,
                       dropout=0.0, bias=True, norm="layernorm", positions="learned")
    # The class table gets one more row, the null class of guidance, which the reference never trained:
    # zeros, so that a guided run is at least defined.
    embed = torch.cat([state["tok_emb.weight"], state["tok_emb.weight"].new_zeros(1, width)])
    ours = {"embed.weight": embed, "pos_embed.weight": state["pos_emb"][0, :positions - 1],
            "norm.weight": state["ln_f.weight"], "norm.bias": state["ln_f.bias"],
            "head.weight": state["head.weight"][:num_image_ids]}
    for i in range(layers):
        a, b = f"blocks.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            ours[b + f"attn.qkv.{part}"] = torch.cat([state[a + f"attn.{n}.{part}"] for n in ("query", "key", "value")])
            ours[b + f"attn.proj.{part}"] = state[a + f"attn.proj.{part}"]
            ours[b + f"norm1.{part}"] = state[a + f"ln1.{part}"]
            ours[b + f"norm2.{part}"] = state[a + f"ln2.{part}"]
            ours[b + f"mlp.fc.{part}"] = state[a + f"mlp.0.{part}"]
            ours[b + f"mlp.proj.{part}"] = state[a + f"mlp.2.{part}"]
    return GPT.from_config_and_state(config.validate(), ours, source).eval()


# ----------------------------------------------------------------------------- DiT-LC / SiT-LC

# hidden size -> heads of the DiT/SiT sizes (S, B, L, XL): heads are not in the shapes
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}


def dit_from_reference_state(state: dict[str, torch.Tensor], *, family: str = "dit", num_heads: int | None = None,
                             source: str = "state dict"):
    """Our DiT from a DiT-LC or SiT-LC state dict (`family` "dit" or "sit").

    Renames `x_embedder.proj` -> `patch_embed`, `y_embedder.embedding_table` -> `y_embedder.table`,
    `mlp.fc1/fc2` -> `mlp.0/2`; keeps the stored position table (the DiT paper's layout). For
    SiT the unused variance rows of the last layer are dropped and t is embedded as it is.
    """
    from .dit import DiT, DiTConfig

    _need(state, ["x_embedder.proj.weight", "x_embedder.proj.bias", "pos_embed", "y_embedder.embedding_table.weight",
                  "final_layer.linear.weight", "final_layer.linear.bias"], source)
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"{source}: pos_embed has {tokens} rows, not a square grid of patches")
    depth = _count(state, r"blocks\.(\d+)\.")
    heads = num_heads or _HEADS_BY_WIDTH.get(hidden)
    if heads is None:
        raise ValueError(f"{source}: width {hidden} is none of DiT's sizes; pass the head count (num_heads)")
    rows = state["final_layer.linear.weight"].shape[0]
    out_channels = rows // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{source}: the last layer predicts {out_channels} channels for {in_channels}-channel latents")
    learn_sigma = out_channels == 2 * in_channels and family == "dit"
    ours = {"patch_embed.weight": state["x_embedder.proj.weight"], "patch_embed.bias": state["x_embedder.proj.bias"],
            "pos_embed": state["pos_embed"].float(), "y_embedder.table.weight": state["y_embedder.embedding_table.weight"]}
    renames = (("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.2."))
    for key, value in state.items():
        if key.startswith(("blocks.", "t_embedder.", "final_layer.adaLN_modulation.")):
            for old, new in renames:
                key = key.replace(old, new)
            ours[key] = value
    weight, bias = state["final_layer.linear.weight"], state["final_layer.linear.bias"]
    if out_channels == 2 * in_channels and not learn_sigma:
        # rows are (patch row, patch column, channel) with the channel fastest: keep the first C of each 2C
        keep = (torch.arange(rows) % out_channels) < in_channels
        weight, bias = weight[keep], bias[keep]
    ours["final_layer.linear.weight"], ours["final_layer.linear.bias"] = weight, bias
    table_rows = state["y_embedder.embedding_table.weight"].shape[0]
    config = DiTConfig(in_channels=in_channels, input_size=grid * patch, num_classes=table_rows - 1, patch_size=patch,
                       depth=depth, hidden_size=hidden, num_heads=heads,
                       mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden if "blocks.0.mlp.fc1.weight" in state
                       else 4.0, learn_sigma=learn_sigma, pos_embed_layout="columns-first",
                       sit_time_scale=1.0 if family == "sit" else 1000.0)
    return DiT.from_config_and_state(config.validate(), ours, source).eval()


# ----------------------------------------------------------------------------- LDM-LC

_UNET_RENAMES = (
    (r"\.in_layers\.0\.", ".norm1."), (r"\.in_layers\.2\.", ".conv1."), (r"\.emb_layers\.1\.", ".emb."),
    (r"\.out_layers\.0\.", ".norm2."), (r"\.out_layers\.3\.", ".conv2."), (r"\.skip_connection\.", ".skip."),
    (r"\.op\.", ".conv."), (r"\.transformer_blocks\.0\.", ".block."), (r"\.ff\.net\.0\.", ".ff.0."),
    (r"\.ff\.net\.2\.", ".ff.2."),
)


def _ldm_weights(state: dict, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The UNet weights without `model.diffusion_model.`: the EMA copy when the file has one."""
    prefix = "model.diffusion_model."
    raw = _tensors(state, prefix)
    ema = {k: v for k, v in state.items() if k.startswith("model_ema.") and k not in ("model_ema.decay",
                                                                                        "model_ema.num_updates")}
    if not ema:
        return raw, "model (the file holds no model_ema.*)"
    # LitEma names each parameter of `model` without its dots: diffusion_model.a.0.b -> diffusion_modela0b
    out, missing = {}, []
    for key, value in raw.items():
        ema_key = "model_ema." + ("diffusion_model." + key).replace(".", "")
        if ema_key in ema:
            out[key] = ema[ema_key]
        else:
            missing.append(ema_key)
    if missing:
        raise ValueError(f"{source}: the EMA copy lacks {len(missing)} weight(s) of the model, e.g. {missing[0]}; "
                         "the file is incomplete")
    return out, "model_ema (the weights run_evaluations.py samples with)"


def unet_config_from_reference(unet: dict[str, torch.Tensor], class_rows: int, *, input_size: int,
                               yaml_params: dict | None = None, source: str = "state dict"):
    """The UNetConfig of LDM-LC weights: from the shapes, or from the yaml's unet_config params
    when given (then checked against the shapes when loading)."""
    from .unet import UNetConfig

    _need(unet, ["input_blocks.0.0.weight", "out.2.weight", "time_embed.0.weight"], source)
    mc, in_channels = unet["input_blocks.0.0.weight"].shape[:2]
    if yaml_params:
        p = yaml_params
        head_channels, heads = p.get("num_head_channels", -1), p.get("num_heads", -1)
        try:
            config = UNetConfig(in_channels=p.get("in_channels", in_channels), out_channels=p.get("out_channels"),
                              input_size=int(p.get("image_size", input_size)), num_classes=class_rows - 1,
                              model_channels=p["model_channels"], channel_mult=tuple(p["channel_mult"]),
                              num_res_blocks=p["num_res_blocks"],
                              attention_resolutions=tuple(p["attention_resolutions"]),
                              num_heads=heads if head_channels == -1 else 8,
                              num_head_channels=None if head_channels == -1 else head_channels,
                              context_dim=p.get("context_dim", 512), class_dropout=0.0, norm_eps=1e-5).validate()
        except KeyError as err:
            raise ValueError(f"the config's unet_config.params lack {err}; pass the reference's yaml") from None
        # validate() warned about levels the network never reaches; the saved config keeps the others only
        factors = [2 ** i for i in range(len(config.channel_mult))]
        return dataclasses.replace(config, attention_resolutions=tuple(
            r for r in config.attention_resolutions if r in factors))
    # walk the encoder: residual blocks until a downsample ends each level
    mult, counts, attention, factor, blocks = [], [0], [], 1, 0
    i = 1
    while f"input_blocks.{i}.0.op.weight" in unet or f"input_blocks.{i}.0.in_layers.2.weight" in unet:
        if f"input_blocks.{i}.0.op.weight" in unet:
            counts.append(0)
            factor *= 2
        else:
            width = unet[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            if counts[-1] == 0:
                mult.append(width // mc)
            counts[-1] += 1
            if f"input_blocks.{i}.1.proj_in.weight" in unet and factor not in attention:
                attention.append(factor)
        i += 1
    if not mult or len(set(counts)) != 1:
        raise ValueError(f"{source}: the UNet's input blocks do not form levels of equal depth; the file is incomplete")
    context = next((v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")), 512)
    return UNetConfig(in_channels=in_channels, out_channels=unet["out.2.weight"].shape[0], input_size=input_size,
                      num_classes=class_rows - 1, model_channels=mc, channel_mult=tuple(mult), num_res_blocks=counts[0],
                      attention_resolutions=tuple(attention), num_head_channels=32, context_dim=context,
                      class_dropout=0.0, norm_eps=1e-5).validate()


def unet_from_reference_state(state: dict[str, torch.Tensor], *, input_size: int, yaml_params: dict | None = None,
                              source: str = "state dict"):
    """Our UNet from an LDM-LC state dict (the whole LatentDiffusion dict); the EMA weights when
    present. Returns (model, which weights were used)."""
    from .unet import UNet

    unet, weights = _ldm_weights(state, source)
    _need(state, ["cond_stage_model.embedding.weight"], source)
    classes = state["cond_stage_model.embedding.weight"]
    config = unet_config_from_reference(unet, classes.shape[0], input_size=input_size, yaml_params=yaml_params,
                                        source=source)
    ours = {"class_embed.weight": classes}
    for key, value in unet.items():
        key = "." + key
        for pattern, new in _UNET_RENAMES:
            key = re.sub(pattern, new, key)
        ours[key[1:]] = value
    return UNet.from_config_and_state(config, ours, source).eval(), weights


# ----------------------------------------------------------------------------- tokenizers

def tokenizer_from_reference(state: dict[str, torch.Tensor], source: str, resolution: int = 256):
    """Our VQModel from reference tokenizer weights (reference key names, prefix removed)."""
    from ..tokenizer.reference import config_from_reference_state, convert_reference_state_dict, model_from_reference_state

    converted = convert_reference_state_dict(state)
    config = config_from_reference_state(converted, resolution)
    return model_from_reference_state(converted, config, source)


def _tokenizer_shape(state: dict, source: str) -> tuple[int, int]:
    """(codebook size, downsampling factor) of reference tokenizer weights, read from the shapes."""
    from ..tokenizer.reference import convert_reference_state_dict

    converted = convert_reference_state_dict(state)
    if "quantizer.codebook" not in converted:
        raise ValueError(f"{source} holds no tok_embeddings.weight: not a VQGAN-LC tokenizer")
    levels = {k.split(".")[2] for k in converted if k.startswith("encoder.down.")}
    return converted["quantizer.codebook"].shape[0], 2 ** (len(levels) - 1)


# ----------------------------------------------------------------------------- conversion

def _read_yaml(path: str | os.PathLike) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found; pass the reference's ldm-lc/configs/*.yaml")
    try:
        data = yaml.safe_load(path.read_text())
        return data["model"]["params"]
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not an LDM config with model.params ({' '.join(str(err).split())[:200]})") from None


def convert_reference(family: str, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      tokenizer: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                      num_heads: int | None = None) -> dict:
    """Convert a released checkpoint of `family` into the folder `out` (see the module doc).

    `tokenizer`: our tokenizer folder or a reference tokenizer `.pth`; it replaces one the
    checkpoint carries. `config` (LDM): the reference yaml (architecture and latent size).
    `num_heads` (GPT, DiT, SiT): the head count, which the shapes do not tell (default: the
    reference's). Returns what was written to process.json.
    """
    from ..tokenizer.reference import load_restricted, training_args

    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r}; convert one of {', '.join(FAMILIES)}")
    out = Path(out)
    taken = [name for name in (GENERATOR_DIR, TOKENIZER_DIR, PROCESS_NAME) if (out / name).exists()]
    if taken:
        raise ValueError(f"{out / taken[0]} already exists; choose a new --out (nothing is overwritten)")
    source = str(checkpoint)
    raw = load_restricted(checkpoint)
    args = training_args(raw)
    state, weights = _generator_weights(raw)
    _check_family(family, _family_of(state, args), source)

    carried = {"gpt": "vqgan.", "ldm": "first_stage_model."}.get(family)
    carried_state = _tensors(state, carried) if carried else {}
    if tokenizer is not None:
        tokenizer_path = Path(tokenizer)
        if not tokenizer_path.exists():
            raise FileNotFoundError(f"tokenizer {tokenizer} not found; pass our tokenizer folder or the VQGAN-LC .pth")
        tokenizer_state = None if tokenizer_path.is_dir() else load_restricted(tokenizer_path)
    else:
        tokenizer_path, tokenizer_state = None, (carried_state or None)
    # What the tokenizer weights tell before building it: codebook size and downsampling factor.
    folder_tokenizer = None
    if tokenizer_path is not None and tokenizer_path.is_dir():
        from ..tokenizer.model import VQModel
        folder_tokenizer = VQModel.from_pretrained(tokenizer_path)
        num_ids, downsample = folder_tokenizer.codebook_size, folder_tokenizer.config.autoencoder.downsample_factor
    elif tokenizer_state is not None:
        num_ids, downsample = _tokenizer_shape(tokenizer_state, str(tokenizer or f"{source} ({carried}*)"))
    else:
        num_ids, downsample = args.get("n_vision_words"), None

    yaml_params = _read_yaml(config) if config is not None else None
    if downsample is None and yaml_params is not None:
        mults = ((yaml_params.get("first_stage_config") or {}).get("params") or {}).get("ddconfig", {}).get("ch_mult")
        downsample = 2 ** (len(mults) - 1) if mults else None
    if family == "gpt":
        if num_ids is None:
            raise ValueError(f"{source} carries no tokenizer and saved no n_vision_words: pass --tokenizer to tell "
                             "image ids from class tokens")
        model = gpt_from_reference_state(_tensors(state, "transformer."), int(num_ids), n_head=num_heads or 16,
                                         source=source)
        grid = math.isqrt(model.config.block_size)
        if grid * grid != model.config.block_size:
            raise ValueError(f"{source}: the GPT predicts {model.config.block_size} tokens, not a square grid")
    elif family in ("dit", "sit"):
        model = dit_from_reference_state(state, family=family, num_heads=num_heads, source=source)
        grid = model.config.input_size
    else:
        unet_params = (yaml_params.get("unet_config") or {}).get("params") if yaml_params is not None else None
        if yaml_params is not None and not unet_params:
            raise ValueError(f"{config} has no model.params.unet_config.params; pass the reference's ldm-lc yaml")
        if unet_params is not None and "image_size" in unet_params:
            grid = int(unet_params["image_size"])
        elif downsample is not None:
            grid = 256 // downsample  # the paper's 256 px images
        else:
            raise ValueError(f"{source} carries no tokenizer: pass --tokenizer or --config to give the latent size")
        model, weights = unet_from_reference_state(state, input_size=grid, yaml_params=unet_params, source=source)
        grid = model.config.input_size

    # The tokenizer's resolution is not in its weights: it is the generator's grid times the factor.
    tokenizer_model = folder_tokenizer
    if tokenizer_model is None and tokenizer_state is not None:
        tokenizer_model = tokenizer_from_reference(tokenizer_state, str(tokenizer or f"{source} ({carried}*)"),
                                                   resolution=grid * downsample)
    if tokenizer_model is not None:
        ae, latent = tokenizer_model.config.autoencoder, tokenizer_model.config.quantizer.dim
        if ae.resolution // ae.downsample_factor != grid:
            raise ValueError(f"{source}: the generator works on a {grid}x{grid} grid but the tokenizer makes "
                             f"{ae.resolution // ae.downsample_factor}x{ae.resolution // ae.downsample_factor}; "
                             "pass the tokenizer it was trained with")
        if family == "gpt" and tokenizer_model.codebook_size != model.config.vocab_size:
            raise ValueError(f"{source}: the GPT knows {model.config.vocab_size} image ids but the tokenizer has "
                             f"{tokenizer_model.codebook_size}; pass the tokenizer it was trained with")
        if family != "gpt" and model.config.in_channels != latent:
            raise ValueError(f"{source}: the generator works on {model.config.in_channels}-channel latents but the "
                             f"tokenizer makes {latent}; pass the tokenizer it was trained with")
    tokenizer_sha = _sha256(tokenizer) if tokenizer is not None and tokenizer_state is not None else None

    digest = _sha256(checkpoint)
    model.provenance = {"converted_from": {"file": Path(source).name, "sha256": digest, "format": _NAMES[family],
                                           "weights": weights, "repository": REPOSITORY}}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / GENERATOR_DIR)
    if tokenizer_model is not None:
        if tokenizer is None or tokenizer_sha is not None:  # converted here (a folder of ours keeps its own card)
            origin = Path(tokenizer if tokenizer is not None else source).name
            tokenizer_model.provenance = {**tokenizer_model.provenance, "converted_from": {
                "file": origin if tokenizer is not None else f"{origin} ({carried}*)",
                "sha256": tokenizer_sha or digest, "format": "VQGAN-LC tokenizer", "weights": "as stored",
                "repository": REPOSITORY}}
        tokenizer_model.save_pretrained(out / TOKENIZER_DIR)
    # process.json as every pipeline folder has it, the reference protocol its default
    from ..tokenizer.fingerprint import tokenizer_fingerprint
    from .families import get_family
    from .pipeline import ProcessConfig

    tokens = get_family(family).data_kind == "tokens"
    process = ProcessConfig(
        family=family, diffusion_steps=1000, latent_scale=1.0, grid=(grid, grid),
        latent_dim=0 if tokens else model.config.in_channels,
        codebook_size=model.config.vocab_size if tokens else (tokenizer_model.codebook_size if tokenizer_model else 1),
        num_classes=model.config.num_classes, image_size=grid * downsample if downsample else 0,
        tokenizer=TOKENIZER_DIR if tokenizer_model is not None else "",
        tokenizer_fingerprint=tokenizer_fingerprint(out / TOKENIZER_DIR) if tokenizer_model is not None else "",
        protocol="reference", reference_protocol=reference_protocol(family, downsample=downsample or 16),
        source={"file": Path(source).name, "sha256": digest, "weights": weights, "repository": REPOSITORY,
                **({} if tokenizer_model is not None else
                   {"note": "no tokenizer converted: pass --tokenizer (the VQGAN-LC checkpoint) to decode samples"})},
    ).validate().to_dict()
    atomic_write_json(out / PROCESS_NAME, process)
    return process
