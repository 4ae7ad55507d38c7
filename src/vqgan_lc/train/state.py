"""Training-state checkpoints: everything a resumed run needs to continue exactly.

`train_state.pt` holds the model (and its EMA), the family's extra modules (e.g. the
discriminator), every optimizer, the step, the RNG states and the family's own state. It is
written atomically (`files.atomic_torch_save`): a crash while saving leaves the previous one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_NAME = "train_state.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no training state at {path}")
    try:
        # Our own file (optimizer states, RNG tuples): full unpickling is needed.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot resume: {path} is unreadable ({type(err).__name__}: {err})") from None
