"""One save/load for every model: a folder with `config.json` and `model.safetensors`.

    model.save_pretrained("runs/x/tokenizer")
    VQModel.from_pretrained("runs/x/tokenizer")      # that class
    load_pretrained("runs/x/gpt")                    # whatever model_type the folder holds

A model class derives from `PretrainedModel`, names its `model_type` and `config_class`
(a `Config` dataclass), and takes the config as its first constructor argument. Loading
builds the model on the meta device (no throw-away random weights: a 100,000 x 768 codebook
is never allocated twice), then assigns the file's tensors. Every file is written atomically.

A Hugging Face hub id (`org/name`, optionally `revision=`) loads too: the folder's three files
are fetched (or found in the hub cache) by `huggingface_hub.snapshot_download`; a local folder
of that name always wins. `save_pretrained` also writes a model card (README.md, see
`model_card.py`) and `push_to_hub` uploads the saved folder.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .config import Config
from .files import atomic_save_safetensors, atomic_write_json, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
CARD_NAME = "README.md"
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]  # what a hub snapshot fetches of a model repo
# config.json key holding where the weights came from (e.g. the codebook file's metadata); it is
# not part of the config, so it never changes what a model computes or how configs compare
PROVENANCE_KEY = "provenance"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

# model_type -> "module:Class", imported on first use so that loading one kind of model
# never imports the others.
MODEL_TYPES: dict[str, str] = {
    "vqgan-lc-tokenizer": "vqgan_lc.tokenizer.model:VQModel",
    "vqgan-lc-gpt": "vqgan_lc.generate.gpt:GPT",
    "vqgan-lc-dit": "vqgan_lc.generate.dit:DiT",
    "vqgan-lc-unet": "vqgan_lc.generate.unet:UNet",
    "vqgan-lc-token-classifier": "vqgan_lc.classify.model:TokenClassifier",
}


# Folders that hold several models, known by a marker file: "module:Class" with a from_pretrained.
FOLDER_TYPES: dict[str, str] = {
    "process.json": "vqgan_lc.generate.pipeline:GenerationPipeline",  # generator + tokenizer + sampling process
}


def model_class(model_type: str) -> type["PretrainedModel"]:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(sorted(MODEL_TYPES))}")
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:  # huggingface_hub reads the variable once, at import
        from huggingface_hub.constants import HF_HUB_OFFLINE
    except ImportError:
        return False
    return bool(HF_HUB_OFFLINE)


def resolve_pretrained(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of a pretrained model: `name_or_path` itself when it exists (a local
    folder always wins), else the Hugging Face hub snapshot of the id `org/name` at `revision`
    (config.json, model.safetensors and README.md only; from the hub cache when present)."""
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    if path.exists() or not _HUB_ID.fullmatch(text) or ".." in text:
        return path  # read_config_file says what is wrong with a local path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise FileNotFoundError(f"{text} is not a local folder, and loading it as a Hugging Face hub id needs "
                                "huggingface_hub: pip install 'vqgan-lc[hub]'") from None
    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:
        if _hub_offline():
            raise FileNotFoundError(f"{text} is not a local folder and not in the Hugging Face cache{at}, and "
                                    "HF_HUB_OFFLINE=1 forbids fetching it; unset HF_HUB_OFFLINE or pass a local "
                                    "folder") from None
        raise FileNotFoundError(f"{text} is not a local folder, and the Hugging Face hub could not be reached to "
                                f"fetch it{at} (nor is it cached); check the connection or pass a local folder") from None
    except GatedRepoError:
        raise FileNotFoundError(f"{text} is a gated Hugging Face repository: accept its terms on the hub and log in "
                                "(`hf auth login`), or pass a local folder") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{text} is not a local folder nor a Hugging Face model repository (a private one "
                                "needs `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"the Hugging Face repository {text} has no revision {revision!r}") from None
    except HFValidationError as err:
        raise ValueError(f"{text} is not a local folder nor a valid Hugging Face hub id "
                         f"({' '.join(str(err).split())})") from None
    except OSError as err:  # HTTP errors and the rest of the hub's I/O failures
        raise OSError(f"could not fetch {text}{at} from the Hugging Face hub: {' '.join(str(err).split())[:300]}") from None


def read_config_file(directory: str | os.PathLike) -> dict:
    """The raw `config.json` of a pretrained folder, checked for presence and format."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no pretrained model at {directory}: not a folder"
                                f"{'' if directory.exists() else ' (no such path)'}")
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
    # Parameters kept out of weight decay although they are matrices (say, a learned position
    # table a model wants free); norms, biases and every other 1-d parameter always are.
    no_weight_decay: ClassVar[tuple[str, ...]] = ()

    config: Config

    def __init__(self, config: Config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        self.config = config.validate()
        # facts about where the weights came from (model card material); saved in config.json
        self.provenance: dict = {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """The trainable parameters as AdamW groups, split as nanoGPT's `configure_optimizers`
        splits them: weight decay on matrices (>= 2-d: linear and conv weights, embeddings), none
        on norms, biases and other 1-d parameters, nor on the names in `no_weight_decay`.
        Decayed group first; both keep `named_parameters` order, so optimizer states line up."""
        decay, free = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 and name not in self.no_weight_decay else free).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": free, "weight_decay": 0.0}]

    def configure_optimizer(self, *, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
        """AdamW over `optimizer_groups(weight_decay)`."""
        return torch.optim.AdamW(self.optimizer_groups(weight_decay), lr=lr, betas=betas)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def gather_provenance(self) -> dict:
        """This model's provenance, with what its submodules record (an LC quantizer built from a
        codebook file records that file's metadata under "codebook"); the submodules' is newer."""
        facts = dict(self.provenance)
        for module in self.modules():
            if module is not self and isinstance(getattr(module, "provenance", None), dict):
                facts.update(module.provenance)
        return facts

    def save_pretrained(self, directory: str | os.PathLike, *, report: dict | str | os.PathLike | None = None,
                        license: str | None = None, repo_id: str | None = None) -> Path:
        """Write `config.json`, `model.safetensors` and the model card `README.md` (each atomically).

        The card also shows the training recipe (the run's train_config.json beside the folder)
        and an evaluation report: `report` (a dict or a report.json path), else a report.json
        beside the folder. `license` goes into the card's front matter (default: the library's,
        MIT); `repo_id` names the model in it. A README.md that vqgan-lc did not write is kept."""
        from .model_card import DEFAULT_LICENSE, find_train_config, may_write, read_report, render

        out = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, out / WEIGHTS_NAME, metadata={"format": "pt", "model_type": self.model_type})
        provenance = self.gather_provenance()
        config = self.config.to_dict()
        atomic_write_json(out / CONFIG_NAME, {"model_type": self.model_type, "format_version": FORMAT_VERSION,
                                              **config, **({PROVENANCE_KEY: provenance} if provenance else {})})
        card = out / CARD_NAME
        if may_write(card):
            parameters = list(self.parameters())
            atomic_write_text(card, render(
                self.model_type, config, parameters=sum(p.numel() for p in parameters),
                trainable=sum(p.numel() for p in parameters if p.requires_grad),
                frozen_values=sum(b.numel() for b in self.buffers()), provenance=provenance,
                train_config=find_train_config(out, config), report=read_report(report, out),
                license=license or DEFAULT_LICENSE, repo_id=repo_id))
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload vqgan-lc model", revision: str | None = None,
                    report: dict | str | os.PathLike | None = None, license: str | None = None):
        """Save into a temporary folder (config.json, model.safetensors, README.md) and upload it
        to the Hugging Face hub repository `repo_id` (created when missing; `private` applies
        then). Returns the hub's commit info. `report`/`license`: see `save_pretrained`."""
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise RuntimeError("push_to_hub needs huggingface_hub: pip install 'vqgan-lc[hub]'") from None
        if not _HUB_ID.fullmatch(repo_id):
            raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        with tempfile.TemporaryDirectory(prefix="vqgan-lc-push-") as folder:
            self.save_pretrained(folder, report=report, license=license, repo_id=repo_id)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                     token=token, revision=revision)

    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> Config:
        data = read_config_file(directory)
        if data["model_type"] != cls.model_type:
            raise ValueError(f"{Path(directory) / CONFIG_NAME} holds a {data['model_type']!r} model, "
                             f"not a {cls.model_type!r}")
        fields = {k: v for k, v in data.items() if k not in ("model_type", "format_version", PROVENANCE_KEY)}
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
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                        revision: str | None = None):
        """Load a local folder, or a Hugging Face hub id `org/name` (at `revision`)."""
        directory = resolve_pretrained(name_or_path, revision)
        config = cls.read_config(directory)
        weights = Path(directory) / WEIGHTS_NAME
        model = cls.from_config_and_state(config, read_weights(weights, map_location), str(weights))
        provenance = read_config_file(directory).get(PROVENANCE_KEY)
        model.provenance = dict(provenance) if isinstance(provenance, dict) else {}
        return model.eval()


def load_pretrained(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    revision: str | None = None) -> PretrainedModel:
    """Load whatever model a folder (or a Hugging Face hub id `org/name`) holds, by the
    `model_type` in its config.json; a folder of several models by its marker file (a
    generator pipeline folder gives a `GenerationPipeline`)."""
    local = Path(name_or_path)
    for marker, target in FOLDER_TYPES.items():
        if (local / marker).is_file():
            module, name = target.split(":")
            return getattr(importlib.import_module(module), name).from_pretrained(local, map_location)
    directory = resolve_pretrained(name_or_path, revision)
    return model_class(read_config_file(directory)["model_type"]).from_pretrained(directory, map_location)
