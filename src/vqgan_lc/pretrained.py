"""One save/load for every model: a folder with `config.json` and `model.safetensors`.

    model.save_pretrained("runs/x/tokenizer")
    VQModel.from_pretrained("runs/x/tokenizer")      # that class
    load_pretrained("runs/x/gpt")                    # whatever model_type the folder holds

A model class derives from `PretrainedModel`, names its `model_type` and `config_class`
(a `Config` dataclass), and takes the config as its first constructor argument. Loading
builds the model on the meta device (no throw-away random weights: a 100,000 x 768 codebook
is never allocated twice), then assigns the file's tensors. Every file is written atomically.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .config import Config
from .files import atomic_save_safetensors, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

# model_type -> "module:Class", imported on first use so that loading one kind of model
# never imports the others.
MODEL_TYPES: dict[str, str] = {
    "vqgan-lc-tokenizer": "vqgan_lc.tokenizer.model:VQModel",
    "vqgan-lc-gpt": "vqgan_lc.generate.gpt:GPT",
    "vqgan-lc-dit": "vqgan_lc.generate.dit:DiT",
    "vqgan-lc-unet": "vqgan_lc.generate.unet:UNet",
    "vqgan-lc-token-classifier": "vqgan_lc.classify.model:TokenClassifier",
}


def model_class(model_type: str) -> type["PretrainedModel"]:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(sorted(MODEL_TYPES))}")
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def read_config_file(directory: str | os.PathLike) -> dict:
    """The raw `config.json` of a pretrained folder, checked for presence and format."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no pretrained model at {directory}: not a folder")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a pretrained model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{path} has no model_type: not a vqgan-lc model folder")
    if int(data.get("format_version", 1)) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {data['format_version']}, newer than this vqgan-lc "
                         f"understands ({FORMAT_VERSION}); upgrade vqgan-lc")
    return data


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a pretrained model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
    # load_file packs every tensor into one buffer at byte offsets that need not be 64-byte
    # aligned, and SIMD kernels on misaligned data round differently in the last bit. Each
    # tensor gets its own (aligned) storage, so a loaded model computes exactly what was saved.
    for key in list(state):
        state[key] = state[key].clone()
    return state


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Same keys, same shapes and only finite values, or one line saying what differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
                         f" ({len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            what = "codebook of the wrong size/width" if key.endswith("quantizer.codebook") else "wrong shape"
            raise ValueError(f"{source}: {what} for {key}: {tuple(value.shape)} in the file, "
                             f"{tuple(expected[key].shape)} expected by the config")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: {key} holds non-finite values (NaN or Inf); the file is corrupt")


class PretrainedModel(nn.Module):
    """Base class of every saved model: `save_pretrained` / `from_pretrained` in one format."""

    model_type: ClassVar[str]
    config_class: ClassVar[type[Config]]

    config: Config

    def __init__(self, config: Config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        self.config = config.validate()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` (each atomically) into `directory`."""
        out = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, out / WEIGHTS_NAME, metadata={"format": "pt", "model_type": self.model_type})
        atomic_write_json(out / CONFIG_NAME, {"model_type": self.model_type, "format_version": FORMAT_VERSION,
                                              **self.config.to_dict()})
        return out

    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> Config:
        data = read_config_file(directory)
        if data["model_type"] != cls.model_type:
            raise ValueError(f"{Path(directory) / CONFIG_NAME} holds a {data['model_type']!r} model, "
                             f"not a {cls.model_type!r}")
        fields = {k: v for k, v in data.items() if k not in ("model_type", "format_version")}
        return cls.config_class.from_dict(fields).validate()

    @classmethod
    def from_config_and_state(cls, config: Config, state: dict[str, torch.Tensor], source: str):
        """Build on the meta device and assign `state` (checked first): no throw-away initialisation."""
        with torch.device("meta"):
            model = cls(config)
        check_state(model, state, source)
        model.load_state_dict(state, strict=True, assign=True)
        left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise ValueError(f"{cls.__name__}: {left[0]} is not stored in {source}; the class keeps a "
                             "non-persistent buffer it cannot restore")
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
        config = cls.read_config(directory)
        weights = Path(directory) / WEIGHTS_NAME
        model = cls.from_config_and_state(config, read_weights(weights, map_location), str(weights))
        return model.eval()


def load_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> PretrainedModel:
    """Load whatever model a folder holds, by the `model_type` in its config.json."""
    return model_class(read_config_file(directory)["model_type"]).from_pretrained(directory, map_location)
