"""What every training run shares: batch, optimizer schedule, precision, EMA, checkpoints, logging.

A model family's config (`tokenizer/training.py`, `generate/training.py`) derives from
`TrainConfig` and adds its model config and its own knobs. The command line resolves a
recipe, applies `--set key=value` overrides, and validates once (`Config.validate`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..config import Config, config_differences

T = TypeVar("T", bound="TrainConfig")

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig(Config):
    # Fields that decide where a run's files go, how often it saves and reports and where it runs,
    # never what it computes; a subclass adds its own (class attributes, not fields).
    bookkeeping_fields = ("out_dir", "save_every", "log_every", "image_every", "num_workers", "device")
    # Fields a resumed run may change besides the bookkeeping ones: how long it trains.
    run_length_fields = ("max_steps", "epochs")

    data: str = "demo"                 # what the family reads: image folder / .txt list / "demo[:train][:N]", or a cache
    batch_size: int = 8                # per process; the log states the global batch
    grad_accum: int = 1                # micro-batches per optimizer step
    lr: float = 1e-4
    min_lr: float = 0.0                # the cosine decays to this
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None       # optimizer steps; overrides epochs when set
    warmup_epochs: float = 0.0         # linear warm-up, then half-cycle cosine
    grad_clip: float | None = None     # max global gradient norm per optimizer; None = no clipping
    ema_decay: float | None = None     # EMA of the model's weights (saved and exported when set)
    precision: str = "fp32"            # "fp32" | "bf16" (autocast)
    seed: int = 0
    out_dir: str = "runs/train"
    save_every: int = 1000             # steps between training-state checkpoints (and one at the end)
    log_every: int = 10                # steps between scalar logs (and the first step)
    image_every: int = 500             # steps between sample grids
    num_workers: int = 0
    device: str = "auto"               # "auto" | "cpu" | "cuda" | "cuda:N"
    # Documentation only: the hardware a recipe was written for (global batch = batch x accum x GPUs).
    recipe_gpus: int | None = None

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {self.batch_size} and {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or none to train `epochs`), got {self.max_steps}")
        if self.max_steps is None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 when max_steps is not set, got {self.epochs}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. betas=0.5,0.9; got {self.betas}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("weight_decay and warmup_epochs must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or none, got {self.grad_clip}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be none, got {self.ema_decay}")
        if min(self.save_every, self.log_every, self.image_every) < 1 or self.num_workers < 0:
            raise ValueError("save_every, log_every and image_every must be >= 1, num_workers >= 0")

    @classmethod
    def resume_fields(cls) -> tuple[str, ...]:
        """The fields a resumed run may change; every other one must equal the saved run's."""
        return cls.bookkeeping_fields + cls.run_length_fields

    def differences(self, saved: dict, ignore: tuple[str, ...] = ()) -> list[str]:
        """Dotted names of the fields where a saved `to_dict()` (e.g. read from JSON) differs from
        this config, leaving out `ignore`d top-level fields. The saved dict is read through the
        config class first (`read_saved`), so a field added since it was written takes its default."""
        return [key for key in config_differences(type(self).read_saved(saved), self.to_dict())
                if key.split(".")[0] not in ignore]

    def resume_conflicts(self, saved: dict) -> list[str]:
        """The fields where this config differs from a saved run's and that a resume may not change."""
        return self.differences(saved, ignore=self.resume_fields())


CONFIG_NAME = "train_config.json"


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """A run's JSON file; a damaged one is refused in one line naming it (`files.read_json`)."""
    from ..files import read_json

    return read_json(path, what, "restore it from a copy, or start a new run in another folder")


def read_run_config(run_dir: str | os.PathLike, config_class: type[T], what: str = "training run") -> T:
    """The saved configuration of a run folder (`train_config.json`), refused in one line when it is
    missing, damaged or of another family."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a {what} folder")
    data = read_json_file(path, "the run's saved configuration")
    try:
        return config_class.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path} does not hold a {what} configuration ({err})") from None


def load_recipe(name_or_path: str, recipes: dict[str, Callable[[], T]], config_class: type[T]) -> T:
    """A named recipe, or a .json file holding a saved config (e.g. a run's train_config.json)."""
    if name_or_path in recipes:
        return recipes[name_or_path]()
    if name_or_path.endswith(".json"):
        try:
            data = read_json_file(name_or_path, "the training config")
        except FileNotFoundError:
            raise FileNotFoundError(f"training config {name_or_path} not found") from None
        try:
            return config_class.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{name_or_path} is not a {config_class.__name__} ({err})") from None
    raise ValueError(f"unknown recipe {name_or_path!r}; available: {', '.join(sorted(recipes))} (or a .json file)")
