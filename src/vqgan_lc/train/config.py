"""Typed training configuration, the paper's recipes as named presets, and `key=value` overrides."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from ..tokenizer.losses import LossConfig


@dataclass
class TrainConfig:
    tokenizer: str = "vqgan-lc-tiny"   # a tokenizer preset name, or a path to a tokenizer config.json
    tokenizer_overrides: list[str] = field(default_factory=list)  # e.g. ["quantizer.codebook_size=4096"]
    codebook: str | None = None        # codebook .safetensors (k-means) for kind="lc"; None = random (ablation)
    data: str = "demo"                 # image folder, .txt list, or "demo[:train][:N]"
    image_size: int | None = None      # default: the tokenizer's resolution
    batch_size: int = 8                # per process; the log states the global batch
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None       # optimizer steps; overrides epochs when set
    warmup_epochs: float = 0.0         # linear warm-up, then half-cycle cosine
    loss: LossConfig = field(default_factory=LossConfig)
    precision: str = "fp32"            # "fp32" | "bf16" (autocast; the quantizer search stays fp32)
    seed: int = 0
    out_dir: str = "runs/train"
    save_every: int = 1000             # steps between training-state checkpoints (and one at the end)
    log_every: int = 10
    image_every: int = 500             # steps between reconstruction grids
    usage_every: int = 50              # steps per window of the training-utilization curve
    num_workers: int = 0
    device: str = "auto"               # "auto" | "cpu" | "cuda"
    # Documentation only: the hardware a recipe was written for (global batch = batch x accum x GPUs).
    recipe_gpus: int | None = None

    def validate(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.max_steps is None and self.epochs < 1:
            raise ValueError("set epochs >= 1 or max_steps")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        loss = LossConfig(**data.pop("loss", {}))
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(loss=loss, **data)


def _paper(tokenizer: str) -> TrainConfig:
    # Paper: Adam (0.5, 0.9), lr 5e-4 (the released script uses 1e-4), 5 warm-up epochs then
    # half-cycle cosine, 20 epochs on ImageNet, GAN from step 50,000, LPIPS-VGG, L1 (script).
    # Global batch 256: the released script runs one process with batch 256; here 8 GPUs x 32.
    return TrainConfig(tokenizer=tokenizer, codebook="codebooks/clip-vit-l14-imagenet-100k.safetensors",
                       data="imagenet/train", batch_size=32, lr=5e-4, epochs=20, warmup_epochs=5,
                       loss=LossConfig(perceptual="lpips-vgg", disc_start=50_000), precision="bf16",
                       num_workers=8, save_every=5000, image_every=2000, recipe_gpus=8)


def _cpu(tokenizer: str) -> TrainConfig:
    # Minutes on 2 CPU cores: 64 px demo crops, no GAN (it needs far more steps to help).
    return TrainConfig(tokenizer=tokenizer, data="demo", batch_size=16, lr=1e-3, max_steps=300,
                       warmup_epochs=0, loss=LossConfig(disc_start=10**9), save_every=100,
                       image_every=100, log_every=10, usage_every=25)


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "paper-f16-100k": lambda: _paper("vqgan-lc-f16-100k"),
    "paper-f8-100k": lambda: _paper("vqgan-lc-f8-100k"),
    "cpu-tiny-lc": lambda: _cpu("vqgan-lc-tiny"),
    "cpu-tiny-vqgan": lambda: _cpu("vqgan-tiny"),
}


def get_recipe(name_or_path: str) -> TrainConfig:
    """A recipe by name, or a JSON file holding a TrainConfig dict."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]()
    if name_or_path.endswith(".json"):
        try:
            with open(name_or_path) as f:
                return TrainConfig.from_dict(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"training config {name_or_path} not found") from None
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{name_or_path} is not a training config ({err})") from None
    raise ValueError(f"unknown recipe {name_or_path!r}; available: {', '.join(sorted(RECIPES))} (or a .json file)")


def _coerce(text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(kind):
        return None
    if origin is tuple:
        elem = typing.get_args(kind)[0]
        return tuple(elem(x) for x in text.split(",") if x)
    if origin is list:
        return [x for x in text.split(",") if x]
    if args and origin is not None:  # Optional[X] / X | None
        kind = args[0]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    if kind in (int, float, str):
        return kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
    return text


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Apply `key=value` strings (dotted keys reach nested dataclasses, e.g. `loss.disc_start=1000`)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        target, *rest = key.split(".")
        obj = config
        path = [target, *rest]
        for name in path[:-1]:
            obj = getattr(obj, name, None)
            if not dataclasses.is_dataclass(obj):
                raise ValueError(f"override {key!r}: {name!r} is not a section")
        hints = typing.get_type_hints(type(obj))
        name = path[-1]
        if name not in hints:
            raise ValueError(f"override {key!r}: unknown field {name!r} (known: {', '.join(sorted(hints))})")
        try:
            setattr(obj, name, _coerce(value, hints[name]))
        except ValueError as err:
            raise ValueError(f"override {key!r}: {err}") from None
    return config
