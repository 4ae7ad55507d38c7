"""Self-contained checkpoints: `config.json` + `model.safetensors`, the frozen codebook included.

Also: the inference export (only the projected N x D' codebook is kept) and the loader for
checkpoints of the reference VQGAN-LC code (`tok_embeddings.weight`, `codebook_projection.*`).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import TokenizerConfig

MODEL_TYPE = "vqgan-lc-tokenizer"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write config and weights; each file is replaced atomically (a crash leaves the old one)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "model_type": MODEL_TYPE})
    os.replace(tmp, out / WEIGHTS_NAME)
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **model.config.to_dict()}
    _atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def read_config(directory: str | os.PathLike) -> TokenizerConfig:
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"no tokenizer checkpoint at {directory}: not a directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a tokenizer checkpoint holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if data.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path} describes model_type={data.get('model_type')!r}, not a {MODEL_TYPE}")
    return TokenizerConfig.from_dict(data)


def _check_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
                         f" ({len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            what = "codebook of the wrong size/width" if key == "quantizer.codebook" else "wrong shape"
            raise ValueError(f"{source}: {what} for {key}: {tuple(value.shape)} in the file, "
                             f"{tuple(expected[key].shape)} expected by the config")


def load_pretrained(directory: str | os.PathLike, map_location: str = "cpu"):
    from .model import VQModel

    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a tokenizer checkpoint holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from None
    model = VQModel(config)
    _check_state(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


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
    return exported.eval()


# --- reference VQGAN-LC checkpoints --------------------------------------------------------------
_REFERENCE_RENAMES = {"tok_embeddings.weight": "quantizer.codebook", "codebook_projection.": "quantizer.projector."}
_REFERENCE_DROPPED = ("loss.", "discriminator.", "perceptual_loss.", "lpips.")


def convert_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference keys to ours; drop training-only parts (discriminator, LPIPS)."""
    for wrapper in ("model", "state_dict", "module"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(_REFERENCE_DROPPED):
            continue
        for old, new in _REFERENCE_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = value
    return converted


def load_reference_checkpoint(path: str | os.PathLike, config: TokenizerConfig):
    """Build our model from a reference VQGAN-LC `.pth` checkpoint and the matching config."""

    if not Path(path).is_file():
        raise FileNotFoundError(f"reference checkpoint {path} not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets one clear line
        raise ValueError(f"{path} is not a loadable torch checkpoint ({type(err).__name__}: {err})") from None
    return model_from_reference_state(convert_reference_state_dict(raw), config, str(path))


def model_from_reference_state(state: dict[str, torch.Tensor], config: TokenizerConfig, source: str = "state dict"):
    from .model import VQModel

    if config.quantizer.kind == "lc" and "quantizer.codebook" in state:
        n, c = state["quantizer.codebook"].shape
        if (n, c) != (config.quantizer.codebook_size, config.quantizer.codebook_dim):
            raise ValueError(f"{source}: codebook is {n} x {c}, config expects "
                             f"{config.quantizer.codebook_size} x {config.quantizer.codebook_dim}")
    model = VQModel(config)
    _check_state(model, state, source)
    model.load_state_dict(state, strict=True)
    return model.eval()
