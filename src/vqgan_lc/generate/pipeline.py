"""A generator pipeline folder: everything sampling needs, in one place that can travel.

    DIR/generator/     the generator (config.json + model.safetensors; the EMA weights when kept)
    DIR/tokenizer/     the tokenizer that decodes it (a copy; or process.json names a hub id)
    DIR/process.json   family, diffusion schedule, latent scale, token grid, classes and their
                       names, sampler defaults, and the tokenizer's fingerprint

As diffusers keeps a scheduler config beside its model, the folder needs nothing else: no run,
no cache, no path on the machine it was made on. `train-gen` leaves its run folder in this form
when it finishes, `vqgan-lc export RUN --out DIR` writes one anywhere, and `sample`,
`load_pretrained` and `push_to_hub` take a folder or a hub id.

The tokenizer's fingerprint (its encoding config and the sha256 of its weights) is recorded
when a cache is built and carried through the run into process.json; decoding with a tokenizer
of another fingerprint is refused before any work, since a retrained tokenizer at the same path
would silently turn the generator's tokens into other images.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..files import atomic_write_json
from ..tokenizer.fingerprint import tokenizer_fingerprint
from .families import DataSpec, Drawn, Family, SampleRequest, get_family

PROCESS_NAME = "process.json"
GENERATOR_DIR = "generator"
TOKENIZER_DIR = "tokenizer"
PIPELINE_FORMAT = 1
PROTOCOLS = ("ours", "reference")


@dataclass
class ProcessConfig(Config):
    family: str = ""
    diffusion_steps: int = 1000               # dit / ldm: the training schedule's length
    latent_scale: float = 1.0                 # latents were multiplied by this for training
    grid: tuple[int, int] = (0, 0)            # token grid (h, w)
    latent_dim: int = 0
    codebook_size: int = 0
    num_classes: int = 0
    class_names: tuple[str, ...] = ()         # names of class ids 0..num_classes-1, where the data had them
    image_size: int = 0                       # the resolution the tokenizer decodes the grid to
    method: str | None = None                 # default sampler (None: the family's)
    steps: int | None = None                  # default steps (None: the sampler's)
    tokenizer: str = TOKENIZER_DIR            # a folder relative to the pipeline folder, or a hub id ("": none)
    tokenizer_fingerprint: str = ""
    protocol: str = "ours"                    # what `sample` uses unless told: "ours" | "reference"
    reference_protocol: dict | None = None    # a released model's own sampling protocol (converted folders)
    source: dict | None = None                # what a converted folder was made from (file, sha256, weights)
    format_version: int = PIPELINE_FORMAT

    def check(self) -> None:
        family = get_family(self.family)
        if self.num_classes < 1 or self.codebook_size < 1 or min(self.grid) < 1:
            raise ValueError(f"{PROCESS_NAME} needs num_classes, codebook_size and grid >= 1, got "
                             f"{self.num_classes}, {self.codebook_size}, {self.grid}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{PROCESS_NAME} names {len(self.class_names)} classes but the generator has "
                             f"{self.num_classes}")
        if self.method is not None:
            family.resolve_sampler(self.method, self.steps)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{PROCESS_NAME}: protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.format_version > PIPELINE_FORMAT:
            raise ValueError(f"{PROCESS_NAME} has format_version {self.format_version}, newer than this vqgan-lc "
                             f"understands ({PIPELINE_FORMAT}); upgrade vqgan-lc")

    @property
    def data(self) -> DataSpec:
        return DataSpec(kind=get_family(self.family).data_kind, grid=tuple(self.grid),
                        codebook_size=self.codebook_size, latent_dim=self.latent_dim, num_classes=self.num_classes)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)


def check_tokenizer(folder: str | os.PathLike, expected: str, what: str) -> None:
    """Refuse a tokenizer whose fingerprint is not the one `what` was made with."""
    if not expected:
        return  # made before fingerprints were recorded: nothing to compare
    found = tokenizer_fingerprint(folder)
    if found != expected:
        raise ValueError(f"{folder} is not the tokenizer {what} was made with (fingerprint {found[:12]}, expected "
                         f"{expected[:12]}): decoding with it would give other images; use the tokenizer that "
                         "encoded the cache (a pipeline folder carries its own copy)")


def process_config_of(train_config) -> ProcessConfig:
    """A generator run's ProcessConfig, from its training config (or that config's saved dict)
    alone: what sampling needs."""
    data = train_config if isinstance(train_config, dict) else train_config.to_dict()
    family = get_family(data["generator"].split("-", 1)[0])
    model = data["model"]
    if family.data_kind == "tokens":
        side = int(round(model["block_size"] ** 0.5))
        grid = (side, side)
    else:
        grid = (model["input_size"], model["input_size"])
    return ProcessConfig(
        family=family.name, diffusion_steps=data.get("diffusion_steps", 1000),
        latent_scale=data.get("latent_scale", 1.0), grid=grid,
        latent_dim=model.get("in_channels", 0) if family.data_kind == "latents" else 0,
        codebook_size=data.get("codebook_size") or model.get("vocab_size") or 1, num_classes=model["num_classes"],
        class_names=tuple(data.get("class_names") or ()), image_size=data.get("image_size") or 0,
        tokenizer_fingerprint=data.get("tokenizer_fingerprint") or "")


class GenerationPipeline:
    """A generator, the tokenizer that decodes it, and its ProcessConfig."""

    def __init__(self, generator, tokenizer, process: ProcessConfig, source: str = ""):
        self.generator, self.tokenizer, self.process_config = generator, tokenizer, process.validate()
        self.family: Family = get_family(process.family)
        self.process = self.family.build_process(process)
        self.source = source

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def to(self, device) -> "GenerationPipeline":
        self.generator.to(device)
        self.tokenizer.to(device)
        return self

    # -- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                        revision: str | None = None) -> "GenerationPipeline":
        """A pipeline folder, a Hugging Face hub id of one, or a generator run folder (runs made
        before pipeline folders existed, and interrupted runs, load through their cache)."""
        from ..pretrained import load_pretrained
        from ..tokenizer.model import VQModel

        folder = resolve_pipeline(name_or_path, revision)
        if (folder / PROCESS_NAME).is_file():
            process = read_process(folder)
            generator = load_pretrained(folder / GENERATOR_DIR, map_location)
            if not process.tokenizer:
                raise FileNotFoundError(f"{folder} holds no tokenizer to decode with; convert it again with "
                                        "--tokenizer (the released VQGAN-LC checkpoint or a tokenizer folder)")
            local = folder / process.tokenizer
            tokenizer_dir = local if local.is_dir() else _resolve_tokenizer(process.tokenizer)
            check_tokenizer(tokenizer_dir, process.tokenizer_fingerprint, f"the pipeline {folder}")
            tokenizer = VQModel.from_pretrained(tokenizer_dir, map_location)
            return cls(generator.eval(), tokenizer.eval(), process, str(folder))
        return cls._from_run(folder, map_location)

    @classmethod
    def _from_run(cls, run: Path, map_location) -> "GenerationPipeline":
        from ..pretrained import load_pretrained
        from ..tokenizer.model import VQModel

        config = read_run_config(run)
        process = process_config_of(config)
        tokenizer_dir = config.get("tokenizer", "")
        if not tokenizer_dir:  # a run from before runs named their tokenizer: the cache's header does
            from .cache import open_cache
            header = open_cache(_run_path(run, config["data"])).header
            tokenizer_dir = header["tokenizer"]
            process.image_size = process.image_size or int(header.get("image_size", 0))
            process.tokenizer_fingerprint = header.get("tokenizer_fingerprint", "")
            if not process.tokenizer_fingerprint:
                warnings.warn(f"{run} was trained before tokenizers were fingerprinted: {tokenizer_dir} is "
                              "trusted to be the tokenizer that encoded its cache", stacklevel=3)
        weights = run / GENERATOR_DIR
        if not (weights / "model.safetensors").is_file():
            raise FileNotFoundError(f"{weights} holds no weights yet: the run has not finished; resume it with "
                                    f"`vqgan-lc train-gen --resume {run}`")
        check_tokenizer(tokenizer_dir, process.tokenizer_fingerprint, f"the run {run}")
        generator = load_pretrained(weights, map_location)
        tokenizer = VQModel.from_pretrained(tokenizer_dir, map_location)
        process.tokenizer = str(Path(tokenizer_dir).resolve())
        return cls(generator.eval(), tokenizer.eval(), process, str(run))

    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer_hub_id: str | None = None) -> Path:
        """Write the folder: generator/, tokenizer/ (or `tokenizer_hub_id` in process.json) and process.json."""
        out = Path(directory)
        self.generator.save_pretrained(out / GENERATOR_DIR)
        process = ProcessConfig.from_dict(self.process_config.to_dict())
        if tokenizer_hub_id:
            process.tokenizer = tokenizer_hub_id
        else:
            self.tokenizer.save_pretrained(out / TOKENIZER_DIR)
            process.tokenizer = TOKENIZER_DIR
            process.tokenizer_fingerprint = tokenizer_fingerprint(out / TOKENIZER_DIR)
        atomic_write_json(out / PROCESS_NAME, process.to_dict())  # last: its presence marks a complete folder
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload vqgan-lc generation pipeline"):
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise RuntimeError("push_to_hub needs huggingface_hub: pip install 'vqgan-lc[hub]'") from None
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        with tempfile.TemporaryDirectory(prefix="vqgan-lc-push-") as folder:
            self.save_pretrained(folder)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, token=token)

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def draw(self, labels: torch.Tensor, request: SampleRequest, rng) -> Drawn:
        """The family's raw draw for `labels`: token ids, or latents in the tokenizer's scale."""
        cfg = self.process_config
        shape = (cfg.latent_dim, *cfg.grid) if self.family.data_kind == "latents" else tuple(cfg.grid)
        drawn = self.family.sample(self.generator, self.process, labels, request, shape, rng)
        if drawn.latents is not None:
            drawn.latents = drawn.latents / cfg.latent_scale
        return drawn

    @torch.no_grad()
    def decode(self, drawn: Drawn, snap: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [-1, 1], token ids (B, h, w)) of a draw; latents are snapped to the
        codebook first unless `snap` is False (then the ids are those they would snap to)."""
        if drawn.ids is not None:
            return self.tokenizer.decode_indices(drawn.ids).clamp(-1, 1), drawn.ids
        snapped = self.tokenizer.snap_latents(drawn.latents)
        pictures = self.tokenizer.decode(snapped.quantized if snap else drawn.latents)
        return pictures.clamp(-1, 1), snapped.indices


def read_run_config(run: str | os.PathLike) -> dict:
    """A train-gen run's saved training config, as the dict train_config.json holds."""
    from ..train.config import CONFIG_NAME, read_json_file

    path = Path(run) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run} is not a generator run folder (see `vqgan-lc train-gen`)")
    data = read_json_file(path, "the run's training configuration")
    if not isinstance(data, dict) or "generator" not in data:
        raise ValueError(f"{run} is a tokenizer run, not a generator run")
    return data


def _run_path(run: Path, recorded: str) -> str:
    """A path a run recorded. Runs record absolute paths; older ones recorded them relative to
    wherever training started, which is unknown: the run folder's parent is tried, then the
    working directory."""
    path = Path(recorded)
    if not path.is_absolute() and (run.parent / path).exists():
        return str(run.parent / path)
    return str(path)


def _resolve_tokenizer(hub_id: str) -> Path:
    from ..pretrained import resolve_pretrained
    return resolve_pretrained(hub_id)


def read_process(folder: str | os.PathLike) -> ProcessConfig:
    from ..files import read_json

    path = Path(folder) / PROCESS_NAME
    data = read_json(path, "the pipeline's sampling process", "export the pipeline again with `vqgan-lc export`")
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a pipeline description; export the pipeline again with `vqgan-lc export`")
    return ProcessConfig.from_dict(data).validate()


def resolve_pipeline(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of a pipeline: the path itself, else a hub snapshot of the id `org/name`."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; a generator is a pipeline folder or a train-gen run folder")
        if not (path / PROCESS_NAME).is_file() and not (path / "train_config.json").is_file():
            raise FileNotFoundError(f"{path} is not a generator run nor a pipeline folder (it has no {PROCESS_NAME} "
                                    "and no train_config.json); pass what `vqgan-lc export` or `train-gen` wrote")
        return path
    from ..pretrained import _HUB_ID
    text = os.fspath(name_or_path)
    if not _HUB_ID.fullmatch(text):
        raise FileNotFoundError(f"{path} does not exist: not a generator run nor a pipeline folder (pass one, or a "
                                "hub id org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{text} is not a local folder, and loading it as a hub id needs huggingface_hub: "
                                "pip install 'vqgan-lc[hub]'") from None
    try:
        return Path(snapshot_download(text, revision=revision,
                                      allow_patterns=[PROCESS_NAME, f"{GENERATOR_DIR}/*", f"{TOKENIZER_DIR}/*"]))
    except Exception as err:  # the hub's errors are many; one line says which
        raise FileNotFoundError(f"{text} is not a local folder and could not be fetched from the Hugging Face hub "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """Files of a saved model are replaced, never edited in place (atomic writes), so a hard
    link is as safe as a copy and costs no space; across file systems it is a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp-link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def export_run(run: str | os.PathLike, out: str | os.PathLike | None = None, *,
               tokenizer_hub_id: str | None = None) -> Path:
    """Write a run's pipeline folder into `out` (default: the run folder itself): its generator
    weights, its tokenizer (linked or copied, or named by `tokenizer_hub_id`) and process.json."""
    run = Path(run)
    pipeline = GenerationPipeline._from_run(run, "cpu") if not (run / PROCESS_NAME).is_file() else None
    target = Path(out) if out is not None else run
    if pipeline is None:  # already a pipeline (a finished run): copy what it holds
        process = read_process(run)
        sources = {GENERATOR_DIR: run / GENERATOR_DIR, TOKENIZER_DIR: run / process.tokenizer}
    else:
        process = pipeline.process_config
        sources = {GENERATOR_DIR: run / GENERATOR_DIR, TOKENIZER_DIR: Path(process.tokenizer)}
        process.tokenizer_fingerprint = process.tokenizer_fingerprint or tokenizer_fingerprint(process.tokenizer)
    process = ProcessConfig.from_dict(process.to_dict())
    for name, source in sources.items():
        if name == TOKENIZER_DIR and tokenizer_hub_id:
            continue
        if not source.is_dir():
            raise FileNotFoundError(f"{source} is missing: the {name} of {run} cannot be exported")
        if source.resolve() != (target / name).resolve():
            for item in sorted(p for p in source.iterdir() if p.is_file()):
                _link_or_copy(item, target / name / item.name)
    process.tokenizer = tokenizer_hub_id or TOKENIZER_DIR
    atomic_write_json(target / PROCESS_NAME, process.to_dict())
    return target


__all__ = ["GENERATOR_DIR", "GenerationPipeline", "PROCESS_NAME", "ProcessConfig", "TOKENIZER_DIR", "export_run",
           "process_config_of", "read_process", "resolve_pipeline", "tokenizer_fingerprint"]
