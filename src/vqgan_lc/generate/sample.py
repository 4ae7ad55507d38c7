"""Sampling a generator into images: `vqgan-lc sample PIPELINE --classes 0,1 --per-class K --out DIR`.

PIPELINE is a pipeline folder (`vqgan-lc export`; a finished train-gen run is one), a hub id of
one, or a train-gen run folder. GPT samples token ids (KV cache, temperature, top-k = 10% of the
vocabulary by default, top-p, classifier-free guidance); DiT/LDM sample latents by DDPM or DDIM,
SiT by its ODE (dopri5 or Heun) or SDE sampler; latents are snapped to the nearest projected
codebook entries (or, with `snap=False`, decoded as they are).

Any count, any number of ranks. Samples are numbered 0..N-1 (class by class) and cut into
chunks of `batch_size`; under torchrun rank r draws chunks r, r + W, ... Every random number of
sample i comes from its own generator seeded by (seed, i), so a sample does not depend on the
number of ranks (nor, up to float rounding of batched kernels, on the batch size). Each chunk is
decoded, written and dropped: memory does not grow with N. A chunk is done once its record in
`OUT/.parts/` exists; an interrupted run started again with the same settings keeps finished
chunks and draws the rest (and a finished one just returns its report).

Written to OUT: `<class>/<NNNN>.png` per sample (the class's name where the data had names,
else its id; `--no-png` skips them), `samples.npz` with `--npz` (the ADM evaluation suite's
sample batch: `arr_0` uint8 N x H x W x 3, `arr_1` int64 labels), `grid.png` (up to 8 samples
of up to 16 classes), `tokens.npy` ((N, h*w) int32 ids, for utilization), `labels.npy`,
`sampling.json` (the settings, to resume) and `report.json` (settings, effective values,
utilization of the generated tokens).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config
from ..files import atomic_path, atomic_save_npy, atomic_write_json

SETTINGS_NAME = "sampling.json"
PARTS_DIR = ".parts"  # per-chunk files while sampling; merged and removed at the end
NPZ_NAME = "samples.npz"
GRID_CLASSES, GRID_PER_CLASS = 16, 8
# settings that do not change which images a sampling run draws: a resume may change them
RESUMABLE = ("device", "progress", "overwrite")


@dataclass
class SampleConfig(Config):
    run: str = ""                      # pipeline folder, hub id, or train-gen run folder
    out: str = ""
    classes: tuple[int, ...] = ()      # class ids to sample; empty = every class
    per_class: int = 4
    fid_protocol: bool = False         # the paper's FID protocol: 50 per class over every class
    cfg_scale: float = 1.0             # classifier-free guidance (1.0: conditional only)
    temperature: float = 1.0           # gpt
    top_k: int | None = None           # gpt; None = 10% of the vocabulary (the paper), 0 = off
    top_p: float | None = None         # gpt
    method: str | None = None          # dit/ldm: ddpm | ddim; sit: dopri5 | heun | euler | sde; None = default
    steps: int | None = None           # sampling steps (None: 250 DDPM, 200 DDIM, 50 Heun; dopri5 is adaptive)
    snap: bool = True                  # latents -> nearest codebook entries before decoding (the paper)
    png: bool = True                   # one PNG per sample
    npz: bool = False                  # the ADM sample batch samples.npz
    batch_size: int = 32
    seed: int = 0
    overwrite: bool = False            # clear a non-empty OUT that holds another sampling
    device: str = "auto"
    progress: bool = True

    def check(self) -> None:
        if not self.run or not self.out:
            raise ValueError("sample needs the generator (pipeline folder, hub id or run folder) and --out")
        if self.per_class < 1 or self.batch_size < 1:
            raise ValueError(f"per_class and batch_size must be >= 1, got {self.per_class}, {self.batch_size}")
        if self.cfg_scale < 0 or self.temperature < 0:
            raise ValueError(f"cfg_scale and temperature must be >= 0, got {self.cfg_scale}, {self.temperature}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if any(c < 0 for c in self.classes):
            raise ValueError(f"class ids must be >= 0, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"class {twice[0]} is listed twice in --classes; list each class once and set "
                             "--per-class for more samples")
        if not (self.png or self.npz):
            raise ValueError("--no-png without --npz would write no images; keep the PNGs or add --npz")
        if self.fid_protocol and (self.classes or self.per_class != 50):
            raise ValueError("--fid-protocol samples 50 per class of every class; drop --classes and --per-class")


def _identity(config: SampleConfig, fingerprint: str) -> dict:
    """What decides the images of a sampling run (compared when a run is started again)."""
    data = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE}
    data["generator_fingerprint"] = fingerprint
    return json.loads(json.dumps(data))


def _prepare_out(config: SampleConfig, identity: dict, is_main: bool) -> tuple[Path, bool]:
    """The samples folder, empty or holding this very sampling (then resumed). A folder with
    anything else is refused unless --overwrite, which clears it."""
    from ..files import check_writable_dir

    out = Path(config.out)
    settings = out / SETTINGS_NAME
    resumed = False
    if out.is_dir() and any(out.iterdir()):
        previous = _read_settings(settings) if settings.is_file() else None
        if previous == identity:
            resumed = True
        elif config.overwrite:
            if is_main:
                for item in out.iterdir():
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        else:
            what = "another sampling (other settings or generator)" if previous is not None else "other files"
            raise ValueError(f"{out} already holds {what}; pick an empty --out, or pass --overwrite to clear it "
                             "(a folder is resumed only with the same settings)")
    check_writable_dir(out, "samples folder")
    if is_main and not resumed:
        atomic_write_json(settings, identity)
    return out, resumed


def _read_settings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn file from a killed run: treated as another sampling


def _generator_fingerprint(pipeline) -> str:
    """Identifies the generator weights (their config and a hash of the first and last tensors'
    bytes: cheap, and different for any two trainings)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(pipeline.generator.config.to_dict(), sort_keys=True, default=str).encode())
    state = pipeline.generator.state_dict()
    names = sorted(state)
    for name in names[:2] + names[-2:]:
        digest.update(name.encode())
        digest.update(state[name].detach().float().cpu().numpy().tobytes())
    digest.update(pipeline.process_config.tokenizer_fingerprint.encode())
    return digest.hexdigest()


@torch.no_grad()
def sample_run(config: SampleConfig) -> dict:
    """Sample, decode and write everything listed in the module doc; returns the report (on
    every rank; only rank 0 writes the merged files)."""
    from tqdm.auto import tqdm

    from ..data.grid import save_png
    from .families import SampleRequest
    from .noise import RowGenerators
    from .pipeline import GenerationPipeline

    config.validate()
    env = distributed.init(config.device)
    pipeline = GenerationPipeline.from_pretrained(config.run).to(env.device)
    family, process = pipeline.family, pipeline.process_config
    num_classes = process.num_classes
    if config.fid_protocol:
        config.per_class = 50
    classes = list(config.classes) or list(range(num_classes))
    if max(classes) >= num_classes:
        raise ValueError(f"class {max(classes)} does not exist: the generator knows classes 0..{num_classes - 1}")
    method = config.method or process.method
    steps = config.steps
    if steps is None and method == process.method:
        steps = process.steps  # the pipeline's default steps go with its default sampler only
    method, steps = family.resolve_sampler(method, steps)
    request = SampleRequest(method=method, steps=steps, cfg_scale=config.cfg_scale, temperature=config.temperature,
                            top_k=config.top_k, top_p=config.top_p)
    if family.data_kind == "tokens":
        if not config.snap:
            raise ValueError(f"{family.name} draws token ids, which are codebook entries already; --no-snap only "
                             "applies to latent generators (dit, sit, ldm)")
        if request.top_k is None:
            request.top_k = max(1, process.codebook_size // 10)  # the paper's 10% of the vocabulary
    elif (config.top_k, config.top_p, config.temperature) != (None, None, 1.0):
        raise ValueError(f"--top-k, --top-p and --temperature are token sampling settings; {family.name} draws "
                         "latents (use --cfg-scale, --method, --steps)")

    identity = _identity(config, _generator_fingerprint(pipeline))
    out, resumed = _prepare_out(config, identity, env.is_main)
    distributed.barrier()
    parts = out / PARTS_DIR
    if resumed and (out / "report.json").is_file() and not parts.exists():
        return json.loads((out / "report.json").read_text())  # this very sampling, finished already
    parts.mkdir(exist_ok=True)

    labels = np.array([c for c in classes for _ in range(config.per_class)], dtype=np.int64)
    chunks = list(range(0, len(labels), config.batch_size))
    mine = [k for k in range(len(chunks)) if k % env.world_size == env.rank]
    todo = [k for k in mine if not (parts / f"{k:06d}.json").is_file()]
    names = [process.class_name(c) for c in range(num_classes)]
    width = _name_width(config.per_class)
    started = time.perf_counter()
    bar = tqdm(total=sum(min(config.batch_size, len(labels) - chunks[k]) for k in todo), unit="sample",
               desc=f"sampling ({family.name}, {method})", disable=not (config.progress and env.is_main))
    for k in todo:
        first = chunks[k]
        indices = list(range(first, min(first + config.batch_size, len(labels))))
        y = torch.as_tensor(labels[indices], device=env.device)
        t0 = time.perf_counter()
        drawn = pipeline.draw(y, request, RowGenerators(config.seed, indices, env.device))
        pictures, ids = pipeline.decode(drawn, snap=config.snap)
        images = _to_uint8(pictures)
        if config.png:
            for i, image in zip(indices, images):
                label = int(labels[i])
                save_png(image, out / names[label] / f"{i % config.per_class:0{width}d}.png")
        atomic_save_npy(parts / f"{k:06d}.tokens.npy", ids.reshape(len(indices), -1).to(torch.int32).cpu().numpy())
        if config.npz:
            atomic_save_npy(parts / f"{k:06d}.images.npy", images)
        # written last: the chunk counts as done only once all its files are in place
        atomic_write_json(parts / f"{k:06d}.json", {"nfe": drawn.nfe, "seconds": time.perf_counter() - t0,
                                                    "rows": len(indices)})
        bar.update(len(indices))
    bar.close()
    seconds = time.perf_counter() - started
    distributed.barrier()
    report = _finish(config, pipeline, out, labels, chunks, classes, names, method, steps, request, seconds,
                     resumed, len(todo)) if env.is_main else {}
    distributed.barrier()
    return report


def _finish(config, pipeline, out: Path, labels, chunks, classes, names, method, steps, request, seconds, resumed,
            drawn_chunks) -> dict:
    """Rank 0: merge the chunk files into tokens.npy, labels.npy, samples.npz and grid.png, and report."""
    from ..evaluate.evaluator import write_report
    from ..data.grid import save_grid
    from ..quantize.usage import UsageAccumulator

    parts = out / PARTS_DIR
    process, family = pipeline.process_config, pipeline.family
    records = [json.loads((parts / f"{k:06d}.json").read_text()) for k in range(len(chunks))]
    usage = UsageAccumulator(process.codebook_size)
    tokens_path = out / "tokens.npy"
    length = int(np.prod(process.grid))
    with atomic_path(tokens_path) as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(len(labels), length))
        for k, first in enumerate(chunks):
            block = np.load(parts / f"{k:06d}.tokens.npy")
            merged[first:first + len(block)] = block
            usage.update(torch.from_numpy(block.astype(np.int64)))
        merged.flush()
        del merged
    atomic_save_npy(out / "labels.npy", labels)
    if config.npz:
        _write_npz(out / NPZ_NAME, [parts / f"{k:06d}.images.npy" for k in range(len(chunks))], labels)
    _write_grid(config, out, parts, chunks, labels, classes, names, save_grid)
    stats = usage.stats()
    is_tokens = family.data_kind == "tokens"
    nfe = [r["nfe"] for r in records]
    report = {
        "generator": config.run, "family": family.name, "num_samples": int(len(labels)), "classes": classes,
        "class_names": {str(c): names[c] for c in classes}, "per_class": config.per_class,
        "fid_protocol": config.fid_protocol, "guidance_scale": config.cfg_scale, "method": method, "steps": steps,
        "mean_nfe": float(np.mean(nfe)) if nfe and not is_tokens else None,
        "snapped": config.snap, "temperature": config.temperature if is_tokens else None,
        "top_k": request.top_k if is_tokens else None, "top_p": config.top_p if is_tokens else None,
        "seed": config.seed, "batch_size": config.batch_size, "world_size": distributed.world_size(),
        "codebook_size": process.codebook_size, "utilization": stats["utilization"],
        "num_used": stats["num_used"], "num_tokens": stats["num_tokens"],
        "tokens_per_entry": stats["num_tokens"] / process.codebook_size,
        "seconds": round(seconds, 2), "resumed": resumed, "chunks_drawn_now": drawn_chunks,
        "outputs": {"png": config.png, "npz": NPZ_NAME if config.npz else None},
        "protocol": {"utilization": "distinct codebook entries among all generated tokens of this folder / codebook_size "
                                    "(for LDM/DiT/SiT: the entries the sampled latents snap to)",
                     "seeds": "sample i draws every random number from its own generator seeded by (seed, i)"},
    }
    write_report(report, out / "report.json")
    shutil.rmtree(parts)  # everything it held is merged into the files above
    return report


def _to_uint8(pictures: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as the PNGs and the ADM batches store them."""
    from ..data import to_uint8
    return to_uint8(pictures).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _name_width(per_class: int) -> int:
    return max(4, len(str(per_class)))


def _write_npz(path: Path, image_parts: list[Path], labels: np.ndarray) -> None:
    """samples.npz (arr_0 uint8 N x H x W x 3, arr_1 labels) streamed part by part into the zip:
    a 50,000-image batch (9.8 GB at 256 px) never sits in memory."""
    import zipfile

    first = np.load(image_parts[0], mmap_mode="r")
    shape = (len(labels), *first.shape[1:])
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                              "fortran_order": False, "shape": shape})
                for part in image_parts:
                    member.write(np.ascontiguousarray(np.load(part, mmap_mode="r")).tobytes())
            with archive.open("arr_1.npy", "w") as member:
                np.lib.format.write_array(member, labels)


def _write_grid(config, out: Path, parts: Path, chunks, labels, classes, names, save_grid) -> None:
    """grid.png: up to GRID_PER_CLASS samples of each of up to GRID_CLASSES classes, one row per
    class, read back from the PNGs (or the npz parts) so that every rank's samples can appear."""
    from PIL import Image

    per_row = min(config.per_class, GRID_PER_CLASS)
    pictures = []
    for c_index, label in enumerate(classes[:GRID_CLASSES]):
        for j in range(per_row):
            i = c_index * config.per_class + j
            if config.png:
                path = out / names[label] / f"{j:0{_name_width(config.per_class)}d}.png"
                image = np.asarray(Image.open(path).convert("RGB"))
            else:
                k = i // config.batch_size
                image = np.load(parts / f"{k:06d}.images.npy", mmap_mode="r")[i - chunks[k]]
            pictures.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1)
    save_grid(torch.stack(pictures), out / "grid.png", nrow=per_row)
