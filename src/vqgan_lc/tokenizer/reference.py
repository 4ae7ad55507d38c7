"""Checkpoints of the reference VQGAN-LC training code, loaded into this package's `VQModel`.

The reference script saves `{"model": state_dict, "args": argparse.Namespace(...),
"optimizer": ..., "epoch": ..., "scaler": ...}` (some copies say "state_dict" instead of
"model", or keep DDP's `module.` prefix). Its frozen codebook is `tok_embeddings.weight`, its
projector `codebook_projection.*`; the discriminator and LPIPS weights only serve training
and are dropped.

`torch.load(weights_only=True)` refuses the `argparse.Namespace` of the training arguments.
That one class is allowed here and nothing else: any other object in the pickle is still
refused, because unpickling an arbitrary class can run arbitrary code.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..pretrained import check_state
from .config import TokenizerConfig

_REFERENCE_RENAMES = {"tok_embeddings.weight": "quantizer.codebook", "codebook_projection.": "quantizer.projector."}
_REFERENCE_DROPPED = ("loss.", "discriminator.", "perceptual_loss.", "lpips.")
# Training arguments of the reference script that decide the model's shapes: an error about
# shapes names them, so the caller sees which config the checkpoint needs.
_REFERENCE_SHAPE_ARGS = ("n_vision_words", "embed_dim", "use_cblinear", "tuning_codebook", "quantizer_type",
                         "vq_config_path")


@dataclass
class ReferenceCheckpoint:
    state: dict[str, torch.Tensor]  # the model's weights under this package's key names
    args: dict = field(default_factory=dict)  # the training script's arguments (empty when not saved)


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _args_hint(args: dict | None) -> str:
    shown = [f"{k}={args[k]!r}" for k in _REFERENCE_SHAPE_ARGS if args and k in args]
    return f" (the checkpoint was trained with {', '.join(shown)})" if shown else ""


def convert_reference_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """Rename reference keys to ours; drop training-only parts (discriminator, LPIPS).

    `state`: the state dict, or the whole checkpoint dict that holds it under "model",
    "state_dict" or "module"; entries that are not tensors (epoch, args, ...) are skipped.
    """
    for wrapper in ("model", "state_dict", "module"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key.removeprefix("module.")
        if key.startswith(_REFERENCE_DROPPED):
            continue
        for old, new in _REFERENCE_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = value
    return converted


def load_restricted(path: str | os.PathLike) -> dict:
    """The dict a reference `.pth` file holds, unpickled with only tensors, plain values and
    argparse.Namespace allowed (nothing else in the file can run code); one-line errors for a
    missing, truncated or foreign file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"reference checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:
            raise ValueError(f"{path}: refused to unpickle {refused.group(1)}; a reference checkpoint may hold only "
                             "tensors, plain values and argparse.Namespace (other objects could run code on load), "
                             "so re-save it keeping only its weights ('model', 'state_dict' or 'ema') and 'args'") from None
        raise ValueError(f"{path} is not a loadable torch checkpoint (UnpicklingError: {_one_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - any other reading failure gets one clear line
        raise ValueError(f"{path} is not a loadable torch checkpoint, or it is truncated "
                         f"({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict with a state dict "
                         "(under 'model' or 'state_dict')")
    return raw


def training_args(raw: dict) -> dict:
    """The checkpoint's training arguments as a dict (empty when it saved none)."""
    args = raw.get("args")
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}


def read_reference_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """The converted weights and the training arguments (e.g. `embed_dim`, `n_vision_words`)
    of a reference `.pth` checkpoint, read without running any code from the file."""
    raw = load_restricted(path)
    return ReferenceCheckpoint(convert_reference_state_dict(raw), training_args(raw))


def config_from_reference_state(state: dict[str, torch.Tensor], resolution: int = 256) -> TokenizerConfig:
    """The TokenizerConfig whose shapes a converted reference state dict has (an LC tokenizer).

    Everything but the image resolution is in the shapes: the encoder's levels, widths, residual
    blocks and attention levels, the frozen codebook (N x C) and the latent width D'. The
    resolution (the paper's: 256) only sets at which levels attention sits.
    """
    from .config import AutoencoderConfig, get_preset

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"the tokenizer weights have no {key}: not a VQGAN-LC tokenizer")
        return tuple(state[key].shape)

    ch = shape("encoder.conv_in.weight")[0]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    if not levels or levels != list(range(len(levels))):
        raise ValueError("the tokenizer weights have no encoder.down.* levels: not a VQGAN-LC tokenizer")
    ch_mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in levels)
    blocks = {int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block.")}
    attn = tuple(resolution // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state)
    dim, z_channels = shape("quant_conv.weight")[:2]
    size, codebook_dim = shape("quantizer.codebook")
    config = get_preset("vqgan-lc-f16-100k")
    config.autoencoder = AutoencoderConfig(resolution=resolution, ch=ch, ch_mult=ch_mult, num_res_blocks=len(blocks),
                                           attn_resolutions=attn, z_channels=z_channels)
    q = config.quantizer
    q.codebook_size, q.codebook_dim, q.dim = size, codebook_dim, dim
    q.projector = "linear" if "quantizer.projector.weight" in state else "none"
    return config.validate()


def load_reference_checkpoint(path: str | os.PathLike, config: TokenizerConfig):
    """Build our model from a reference VQGAN-LC `.pth` checkpoint and the matching config.

    To see the training arguments first (and pick the config from them), call
    `read_reference_checkpoint` and pass its `state` and `args` to `model_from_reference_state`.
    """
    checkpoint = read_reference_checkpoint(path)
    return model_from_reference_state(checkpoint.state, config, str(path), checkpoint.args)


def model_from_reference_state(state: dict[str, torch.Tensor], config: TokenizerConfig, source: str = "state dict",
                               args: dict | None = None):
    """A `VQModel` of `config` holding the converted reference `state` (eval mode).

    `args`: the checkpoint's training arguments, named in shape errors when given.
    """
    from .model import VQModel

    if config.quantizer.kind == "lc" and "quantizer.codebook" in state:
        n, c = state["quantizer.codebook"].shape
        if (n, c) != (config.quantizer.codebook_size, config.quantizer.codebook_dim):
            raise ValueError(f"{source}: codebook is {n} x {c}, config expects "
                             f"{config.quantizer.codebook_size} x {config.quantizer.codebook_dim}{_args_hint(args)}")
    model = VQModel(config)
    try:
        check_state(model, state, source)
    except ValueError as err:
        raise ValueError(f"{err}{_args_hint(args)}") from None
    model.load_state_dict(state, strict=True)
    return model.eval()
