"""Generated-sample evaluation (`vqgan-lc eval-gen`): the ADM suite's FID, sFID, IS, precision and
recall; FD-lite0, class consistency and token utilization.

Either side (samples, reference) is an image folder, an ADM sample batch (.npz with `arr_0`
(N, H, W, 3) uint8 images, optional `arr_1` labels) or a statistics .npz (the ADM reference
batches' `mu` / `sigma` / `mu_s` / `sigma_s`, with `arr_0` images where present, or a file
from `vqgan-lc eval-gen stats`, which computes a reference set's statistics once:
`compute_reference_stats`). The samples folder is what the sampler writes:
`SAMPLES/<class id>/<NNNN>.png`, optionally `SAMPLES/tokens.npy` ((n, L) token ids) and
`SAMPLES/report.json` (`codebook_size`, `guidance_scale`). A reference folder holds real images
in class sub-folders; class consistency trains its classifier on them.

Memory stays bounded whatever the set sizes: images stream in batches into running moments and
per-split Inception Score sums (`evaluate.adm`); only the pool features behind precision /
recall are kept (all samples; at most `pr_reference_images` reference images, a seeded
subset); the token file is memory-mapped and counted in chunks. Under torchrun both sides are
split over the ranks and every sum is merged exactly, so the report equals one process's.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vqgan_lc import distributed
from vqgan_lc.backbones import inception
from vqgan_lc.config import Config
from vqgan_lc.data import class_names, list_images
from vqgan_lc.data.npz import STATS_KEYS, npz_keys
from vqgan_lc.evaluate.adm import IS_SPLIT_SIZE, PR_BLOCK, PR_NEIGHBOURS, SideFeatures, feature_dims, frechet, precision_recall
from vqgan_lc.evaluate.classifier import DEFAULT_SIZE as CLASSIFIER_SIZE
from vqgan_lc.evaluate.classifier import load_or_train_classifier, predict
from vqgan_lc.evaluate.evaluator import FID_CHOICES, MIN_TOKENS_PER_ENTRY, write_report
from vqgan_lc.evaluate.frechet import InceptionFeatures, Lite0Features
from vqgan_lc.evaluate.sources import FolderImages, NpzBatchImages
from vqgan_lc.files import atomic_torch_save, atomic_write, check_writable_dir
from vqgan_lc.quantize.usage import UsageAccumulator

SAMPLER_REPORT = "report.json"
TOKENS_FILE = "tokens.npy"
SAMPLER_NPZ = "samples.npz"  # the ADM sample batch `vqgan-lc sample --npz` writes beside the PNGs
TOKEN_CHUNK_ROWS = 4096  # rows of tokens.npy counted at a time: bounded memory for any number of samples
LOW_CLASSIFIER_ACCURACY = 0.9
PR_REFERENCE_IMAGES = 10000  # reference images behind precision / recall: the size of the ADM reference batches
STATS_FORMAT = 1
ADM_ORDER = (("inception_score", "Inception Score"), ("fid", "FID"), ("sfid", "sFID"), ("precision", "Precision"),
             ("recall", "Recall"))


@dataclass
class GenEvalConfig(Config):
    samples: str = ""  # the sampler's output folder (<class id>/<NNNN>.png, tokens.npy, report.json), a sample .npz or a stats .npz
    reference: str = ""  # real images in class sub-folders (sorted like the generator's class ids), an .npz batch or a stats .npz
    out: str = ""  # report.json goes here
    fid: str = "auto"  # "auto" (FID when the Inception weights are on disk) | "inception" (required) | "off"
    fd_image_size: int = 256  # both sets are loaded at this size (short side, centre crop); a multiple of 32
    classifier_size: int = CLASSIFIER_SIZE  # the class-consistency classifier's input size
    batch_size: int = 32
    workers: int = 2  # image-decoding processes (0: decode in this process)
    device: str = "auto"
    cache_dir: str | None = None  # classifier cache root; default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc
    inception_weights: str | None = None  # FID Inception file; default $VQGAN_LC_INCEPTION or torch hub's cache
    pr_reference_images: int = PR_REFERENCE_IMAGES  # reference images for precision / recall (a seeded subset of more)
    pr_block: int = PR_BLOCK  # rows and columns of one block of precision / recall distances (memory)
    progress: bool = True

    def check(self) -> None:
        if not self.samples or not self.reference or not self.out:
            raise ValueError("eval-gen needs the samples (folder or .npz), --reference (folder or .npz) and --out")
        _check_common(self)
        if self.classifier_size < 8 or self.pr_block < 1:
            raise ValueError(f"need classifier_size >= 8 and pr_block >= 1, got {self.classifier_size}, {self.pr_block}")


@dataclass
class StatsConfig(Config):
    """`vqgan-lc eval-gen stats SOURCE --out REF.npz`: a reference set's statistics, computed once."""

    source: str = ""  # image folder or ADM sample batch (.npz)
    out: str = ""  # the statistics file to write (.npz); never overwritten
    fid: str = "auto"  # "auto" (Inception statistics when its weights are on disk) | "inception" (required) | "off"
    fd_image_size: int = 256  # images are loaded at this size (short side, centre crop); FD-lite0's size
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    inception_weights: str | None = None
    pr_reference_images: int = PR_REFERENCE_IMAGES  # images whose pool features are stored for precision / recall
    checkpoint_seconds: float = 300.0  # progress is saved this often (and at the end of each call): resumable
    max_images: int | None = None  # images to process in this call, per rank (stop early; rerun to resume)
    progress: bool = True

    def check(self) -> None:
        if not self.source or not self.out:
            raise ValueError("eval-gen stats needs the source (image folder or sample .npz) and --out REF.npz")
        if not self.out.endswith(".npz"):
            raise ValueError(f"--out {self.out} must name an .npz file (the statistics are written there)")
        _check_common(self)
        if self.checkpoint_seconds < 0 or (self.max_images is not None and self.max_images < 1):
            raise ValueError(f"need checkpoint_seconds >= 0 and max_images >= 1 or None, got {self.checkpoint_seconds}, "
                             f"{self.max_images}")


def _check_common(config) -> None:
    if config.fid not in FID_CHOICES:
        raise ValueError(f"fid must be one of {FID_CHOICES}, got {config.fid!r}")
    if config.fd_image_size < 32 or config.fd_image_size % 32:
        raise ValueError(f"fd_image_size must be a positive multiple of 32 (e.g. 256), got {config.fd_image_size}")
    if config.batch_size < 1 or config.workers < 0 or config.pr_reference_images < PR_NEIGHBOURS + 1:
        raise ValueError(f"need batch_size >= 1, workers >= 0 and pr_reference_images > {PR_NEIGHBOURS}, got "
                         f"{config.batch_size}, {config.workers}, {config.pr_reference_images}")


def _require_folder(path: str, what: str, hint: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist or is not a folder; {hint}")
    return folder


def _use_fid(config) -> bool:
    """Whether the Inception metrics are computed; fid='inception' without weights fails at once,
    with the one-line "which file, or --download" error of the weight loader."""
    available = inception.available(config.inception_weights)
    if config.fid == "inception" and not available:
        inception.load_fid_inception(config.inception_weights)  # raises the one-line "how to supply" error
    return config.fid == "inception" or (config.fid == "auto" and available)


def _sampler_report(folder: Path) -> tuple[dict, str | None]:
    """The sampler's report.json (empty when absent) and, when it is unreadable, why."""
    path = folder / SAMPLER_REPORT
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return {}, f"{path} is unreadable ({' '.join(str(err).split())}); guidance_scale and codebook_size unknown"
    if not isinstance(data, dict):
        return {}, f"{path} is not a JSON object; guidance_scale and codebook_size unknown"
    return data, None


def _sample_listing(folder: Path, reference_names: list[str]) -> list:
    """The samples: the images inside <class> sub-folders (a class id, or a reference class name),
    ignoring what else the sampler keeps beside them (grid.png, an eval/ folder); a folder with
    no such sub-folder is read as one flat, unlabelled set."""
    from vqgan_lc.data import ImageRecord

    names = set(reference_names)
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and (d.name.isdigit() or d.name in names)),
                        key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    if not class_dirs:
        return list_images(folder)  # ImageError (a ValueError) when it holds no images
    records = [ImageRecord(r.path, i, d.name) for i, d in enumerate(class_dirs) for r in list_images(d)]
    if not records:
        raise ValueError(f"samples folder {folder} has class sub-folders but no images in them")
    return records


def _sample_class_ids(records, folder: Path, reference_names: list[str]) -> list[int] | None:
    """The requested class id of every sample, from its folder name; None for a flat (unlabelled) folder.

    An all-digit folder name is the generator's class id, i.e. the index into the reference's
    sorted class list; any other name must be one of the reference class names.
    """
    if records[0].class_name is None:
        return None
    index = {name: i for i, name in enumerate(reference_names)}
    ids: dict[str, int] = {}
    for name in {r.class_name for r in records}:
        if name.isdigit():
            ids[name] = int(name)
            if reference_names and ids[name] >= len(reference_names):
                raise ValueError(f"{folder / name}: class id {ids[name]} but the reference folder has "
                                 f"{len(reference_names)} classes (ids 0..{len(reference_names) - 1}); sample with "
                                 "a generator trained on this reference set")
        elif name in index:
            ids[name] = index[name]
        else:
            raise ValueError(f"{folder / name}: not a class id and not one of the reference classes "
                             f"({', '.join(reference_names[:5])}{', ...' if len(reference_names) > 5 else ''}); "
                             "name sample folders by class id")
    return [ids[r.class_name] for r in records]


def _utilization(folder: Path, sampler: dict) -> tuple[dict | None, str]:
    """Usage stats of tokens.npy, or None and the reason it was not measured."""
    path = folder / TOKENS_FILE
    if not path.is_file():
        return None, f"not measured: {path} not found (the sampler writes it with the samples' token ids)"
    codebook_size = sampler.get("codebook_size")
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 1:
        return None, f"not measured: {folder / SAMPLER_REPORT} has no positive integer codebook_size"
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: read chunk by chunk below
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npy array ({' '.join(str(err).split())}); "
                         "re-run the sampler or delete it") from None
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"{path} must hold (n, L) integer token ids, got shape {tokens.shape} dtype {tokens.dtype}; "
                         "re-run the sampler or delete it")
    usage = UsageAccumulator(codebook_size)
    for start in range(0, tokens.shape[0], TOKEN_CHUNK_ROWS):
        chunk = torch.from_numpy(np.asarray(tokens[start:start + TOKEN_CHUNK_ROWS], dtype=np.int64))
        try:
            usage.update(chunk)
        except ValueError as err:
            raise ValueError(f"{path}: {err} (codebook_size {codebook_size} from {SAMPLER_REPORT}); the tokens and "
                             "report come from different runs") from None
    stats = usage.stats()
    stats["num_rows"] = int(tokens.shape[0])
    stats["tokens_per_sample"] = int(tokens.shape[1])
    return stats, (f"distinct codebook entries among the generated token ids of {TOKENS_FILE} "
                   f"({stats['num_rows']} samples x {stats['tokens_per_sample']} tokens = {stats['num_tokens']}) "
                   f"/ codebook_size {codebook_size}")


class _Consistency:
    """Per-class counts of samples and of samples the classifier assigns to their requested class."""

    def __init__(self, model, requested: list[int], num_classes: int, names: list[str] | None = None):
        self.model = model
        self.names = names or [str(c) for c in range(num_classes)]
        self.requested = torch.tensor(requested, dtype=torch.long)
        self.total = torch.zeros(num_classes, dtype=torch.long)
        self.hits = torch.zeros(num_classes, dtype=torch.long)

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> None:
        wanted = self.requested[index]
        got = predict(self.model, images).cpu()
        self.total += torch.bincount(wanted, minlength=self.total.numel())
        self.hits += torch.bincount(wanted[got == wanted], minlength=self.total.numel())

    def result(self) -> tuple[float, dict[str, float]]:
        present = self.total > 0
        overall = float(self.hits.sum()) / float(self.total.sum())
        per_class = {self.names[c]: float(self.hits[c]) / float(self.total[c])
                     for c in torch.nonzero(present).flatten().tolist()}
        return overall, per_class

    def ids(self) -> dict[str, int]:
        """class name -> class id, for the classes sampled"""
        return {self.names[c]: c for c in torch.nonzero(self.total > 0).flatten().tolist()}



# ----------------------------------------------------------------------------- the two sides


@dataclass
class _Side:
    """One side of the comparison: images to stream (or none) and statistics read from a file (or none)."""

    what: str  # "samples" | "reference"
    path: Path
    kind: str  # "folder" | "npz" (a sample batch) | "stats"
    images: FolderImages | NpzBatchImages | None
    stats: dict | None = None  # {"mu", "sigma", "mu_s", "sigma_s", "mu_lite0", "sigma_lite0", "pool", "info"} present ones
    class_names: list[str] | None = None  # a reference folder's classes

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)


def _read_stats(path: Path) -> dict:
    """The arrays of a statistics .npz (not its images, which stream)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in STATS_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} has mu but not {', '.join(missing)}; a statistics file holds {', '.join(STATS_KEYS)} "
                             "(write one with `vqgan-lc eval-gen stats`)")
        stats = {k: np.asarray(data[k], dtype=np.float64) for k in (*STATS_KEYS, "mu_lite0", "sigma_lite0")
                 if k in data.files}
        if "pool" in data.files:
            stats["pool"] = np.asarray(data["pool"], dtype=np.float32)
        stats["info"] = json.loads(str(data["info"])) if "info" in data.files else {}
    for mu, sigma in (("mu", "sigma"), ("mu_s", "sigma_s"), ("mu_lite0", "sigma_lite0")):
        if mu in stats and (stats[mu].ndim != 1 or stats[sigma].shape != (stats[mu].size,) * 2):
            raise ValueError(f"{path}: {mu} {stats[mu].shape} and {sigma} {stats[sigma].shape} are not a mean and its "
                             f"covariance (expected ({inception.FEATURE_DIM},) and ({inception.FEATURE_DIM}, "
                             f"{inception.FEATURE_DIM}) for mu / sigma, {inception.SPATIAL_DIM} for mu_s / sigma_s)")
    return stats


def _open_side(path_text: str, what: str, config, reference_names: list[str] | None = None) -> _Side:
    path = Path(path_text)
    if path.is_dir():
        if what == "samples":
            if next(path.iterdir(), None) is None:
                raise ValueError(f"samples folder {path} is empty; run the sampler first or pass the folder it wrote")
            if (path / SAMPLER_NPZ).is_file():  # `sample --npz`: the same pixels, read without decoding PNGs
                return _Side(what, path, "folder", NpzBatchImages(str(path / SAMPLER_NPZ)))
            records = _sample_listing(path, reference_names or [])
            requested = _sample_class_ids(records, path, reference_names or [])
            return _Side(what, path, "folder", FolderImages(records, config.fd_image_size, config.workers, requested))
        records = list_images(path)
        return _Side(what, path, "folder", FolderImages(records, config.fd_image_size, config.workers),
                     class_names=class_names(records))
    if path.is_file() and path.suffix == ".npz":
        keys = npz_keys(path)
        if "mu" in keys:
            images = NpzBatchImages(str(path)) if "arr_0" in keys else None
            return _Side(what, path, "stats", images, stats=_read_stats(path))
        return _Side(what, path, "npz", NpzBatchImages(str(path)))
    hint = ("pass the folder (or --npz file) the sampler wrote" if what == "samples" else
            "pass the training image folder (class sub-folders), an ADM reference batch or a `vqgan-lc eval-gen stats` file")
    raise FileNotFoundError(f"{what} {path} does not exist or is not a folder or an .npz file; {hint}")


def _pr_positions(n: int, limit: int) -> np.ndarray:
    """The images whose pool features precision / recall use: all of a set of <= limit images,
    else a seeded random subset of `limit` (the same whatever the world size)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False)).astype(np.int64)


def _feature_nets(use_inception: bool, config, device) -> dict:
    nets = {"lite0": Lite0Features(size=config.fd_image_size).to(device)}
    if use_inception:
        nets["inception"] = InceptionFeatures(config.inception_weights, resize="tf1").to(device)
    return nets


def _compute(nets: dict, device):
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(device)
        features = {"lite0": nets["lite0"](x.float() / 127.5 - 1.0)}
        if "inception" in nets:
            features.update(nets["inception"].features(x))
        return features
    return run


def _stream(source, side: SideFeatures, compute, *, lo: int, hi: int, batch_size: int, desc: str, progress: bool,
            on_batch=None, after_batch=None) -> tuple[int, int]:
    """Images [lo, hi) of `source` into `side`; returns the unreadable and upscaled counts."""
    skipped = upscaled = 0
    position = lo
    bar = tqdm(total=hi - lo, desc=desc, unit="img", disable=not (progress and distributed.is_main()))
    with torch.no_grad():
        for batch in source.batches(lo, hi, batch_size):
            skipped += batch.num_skipped
            upscaled += batch.num_upscaled
            position += batch.images.shape[0] + batch.num_skipped
            if batch.images.shape[0]:
                side.update(compute(batch.images), batch.positions)
                if on_batch is not None:
                    on_batch(batch)
            bar.update(batch.images.shape[0] + batch.num_skipped)  # after the work: the rate and ETA are honest
            if after_batch is not None:
                after_batch(position, skipped, upscaled)
    bar.close()
    return skipped, upscaled


def _summed(*values: int) -> list[int]:
    return [int(v) for v in distributed.all_reduce(torch.tensor(values, dtype=torch.long)).tolist()]


def _gaussian(side: SideFeatures | None, stats: dict | None, name: str):
    """(mean, covariance) of feature `name` ("lite0", "pool", "spatial") from a file or streamed moments."""
    keys = {"lite0": ("mu_lite0", "sigma_lite0"), "pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}[name]
    if stats is not None and keys[0] in stats:
        return stats[keys[0]], stats[keys[1]]
    if side is not None and name in side.moments and side.moments[name].count >= 2:
        m = side.moments[name]
        return m.mean.cpu().numpy(), m.covariance.cpu().numpy()
    return None


# ----------------------------------------------------------------------------- eval-gen


def evaluate_samples(config: GenEvalConfig) -> dict | None:
    """Evaluate the samples against the reference; writes and returns `OUT/report.json` (None on ranks > 0).

    Report: inception_score (+ inception_score_splits), fid, sfid, precision, recall (None when
    not computed: no Inception weights, fid='off', or what a side lacks), fd_lite0,
    utilization / num_used / num_tokens / tokens_per_entry / codebook_size (null without
    tokens.npy + codebook_size), class_consistency, class_consistency_per_class ({class id:
    share}), classifier_accuracy, num_samples, num_reference, guidance_scale, and protocol (how
    each number was measured). Under torchrun both sides are split over the ranks.
    """
    config.validate()
    env = distributed.init(config.device)
    device = env.device
    reference = _open_side(config.reference, "reference", config)
    reference_names = reference.class_names or []
    samples = _open_side(config.samples, "samples", config, reference_names)
    if samples.kind == "stats" and samples.images is not None:
        samples.images = None  # a statistics file's own images are its reference batch, never samples
    use_fid = _use_fid(config)  # before any work: fid='inception' without weights fails at once
    out = check_writable_dir(config.out, "--out folder")
    sampler, sampler_problem = _sampler_report(samples.path) if samples.kind == "folder" else ({}, None)
    notes = [sampler_problem] if sampler_problem else []

    requested = None if samples.images is None else samples.images.labels
    consistency = classifier_info = None
    if requested is None:
        consistency_reason = "not measured: the samples carry no class ids (no <class id> sub-folders or arr_1 labels)"
    elif reference.kind != "folder" or len(reference_names) < 2:
        consistency_reason = "not measured: needs a reference image folder with at least 2 class sub-folders"
    else:
        if max(requested) >= len(reference_names):
            raise ValueError(f"{samples.path}: class id {max(requested)} but the reference folder has "
                             f"{len(reference_names)} classes; sample with a generator trained on this reference set")
        for turn in ("main", "others"):  # rank 0 trains (or loads) and caches; the others then load it
            if (turn == "main") == env.is_main:
                model, classifier_info = load_or_train_classifier(reference.path, cache_dir=config.cache_dir,
                                                                  size=config.classifier_size, device=device,
                                                                  progress=config.progress)
            distributed.barrier()
        consistency = _Consistency(model, requested, len(reference_names), reference_names)
        consistency_reason = ""

    nets = _feature_nets(use_fid, config, device)
    compute = _compute(nets, device)
    dims = feature_dims(nets)
    counts = {}
    fake = real = None
    if samples.images is not None:
        n = len(samples)
        fake = SideFeatures(dims, keep=np.arange(n) if use_fid else None, num_items=n, inception_score=use_fid,
                            device=device)
        lo, hi = distributed.slice_of(n)
        on_batch = None if consistency is None else (lambda b: consistency(b.images.float() / 127.5 - 1.0, b.positions))
        counts["samples"] = _stream(samples.images, fake, compute, lo=lo, hi=hi, batch_size=config.batch_size,
                                    desc="eval-gen: samples", progress=config.progress, on_batch=on_batch)
    ref_stats = reference.stats
    stream_all = reference.kind != "stats" or "mu_lite0" not in ref_stats  # a stats file lacks FD-lite0 moments
    if reference.images is not None and (stream_all or use_fid):
        n = len(reference)
        keep = _pr_positions(n, config.pr_reference_images) if use_fid else None
        lo, hi = distributed.slice_of(n)
        real = SideFeatures(dims if stream_all else {}, keep=keep, device=device)
        counts["reference"] = _stream(reference.images, real, compute, lo=lo, hi=hi, batch_size=config.batch_size,
                                      desc="eval-gen: reference", progress=config.progress)
    for side in (fake, real):
        if side is not None:
            side.all_reduce()
    if consistency is not None:
        distributed.all_reduce(consistency.total)
        distributed.all_reduce(consistency.hits)
    counts = {what: _summed(*c) for what, c in counts.items()}
    pr = _precision_recall(config, use_fid, samples, reference, fake, real)  # every rank takes a share of the blocks
    if not env.is_main:
        distributed.barrier()
        return None
    try:
        return _write_report(config, out, use_fid, samples, reference, fake, real, pr, sampler, consistency,
                             classifier_info, consistency_reason, nets, counts, notes)
    finally:
        distributed.barrier()  # the other ranks wait here, also when the report fails


def _write_report(config, out, use_fid, samples, reference, fake, real, pr, sampler, consistency, classifier_info,
                  consistency_reason, nets, counts, notes) -> dict:
    report = _metrics(use_fid, samples, reference, fake, real, pr)
    usage, utilization_text = _utilization(samples.path, sampler) if samples.kind == "folder" else (
        None, "not measured: the samples are not a sampler folder (tokens.npy + report.json)")
    report.update({
        "utilization": None if usage is None else float(usage["utilization"]),
        "num_used": None if usage is None else int(usage["num_used"]),
        "num_tokens": None if usage is None else int(usage["num_tokens"]),
        "tokens_per_entry": None if usage is None else usage["num_tokens"] / usage["codebook_size"],
        "codebook_size": None if usage is None else int(usage["codebook_size"]),
        "class_consistency": None,
        "class_consistency_per_class": None,
        "classifier_accuracy": None if classifier_info is None else classifier_info["accuracy"],
        "guidance_scale": sampler.get("guidance_scale"),
    })
    if consistency is not None:
        # keyed by the reference's class names (the ids they have for the generator beside them)
        report["class_consistency"], report["class_consistency_per_class"] = consistency.result()
        report["class_ids"] = consistency.ids()
    report["protocol"] = _protocol(config, report, samples, reference, use_fid, nets, counts, usage,
                                   utilization_text, consistency_reason, classifier_info, notes)
    write_report(report, out / "report.json")
    return report


def _side_count(side: _Side, features: SideFeatures | None) -> int:
    if features is not None and "lite0" in features.moments:
        return features.moments["lite0"].count
    if side.stats is not None:
        return int(side.stats.get("info", {}).get("num_images", 0))
    return 0


def _precision_recall(config, use_fid, samples: _Side, reference: _Side, fake, real) -> tuple | None:
    if not use_fid:
        return None
    pool_fake = fake.kept_pool() if fake is not None else _stored_pool(samples)
    pool_real = real.kept_pool() if real is not None and real.keep is not None else _stored_pool(reference)
    if pool_fake is None or pool_real is None:
        return None
    return precision_recall(pool_real, pool_fake, block=config.pr_block)


def _metrics(use_fid, samples: _Side, reference: _Side, fake, real, pr: tuple | None) -> dict:
    """The numbers, in the ADM suite's order, then FD-lite0 and the counts."""
    num_samples, num_reference = _side_count(samples, fake), _side_count(reference, real)
    if (samples.images is not None and num_samples < 2) or (reference.images is not None and reference.kind != "stats"
                                                           and num_reference < 2):
        raise ValueError(f"need at least 2 readable images on each side for a Frechet distance, got {num_samples} "
                         f"samples and {num_reference} reference images")
    report = {"inception_score": None, "inception_score_splits": None, "fid": None, "sfid": None,
              "precision": None, "recall": None}
    if use_fid:
        if fake is not None:
            report["inception_score_splits"] = fake.inception_score.splits()
            report["inception_score"] = float(np.mean(report["inception_score_splits"]))
        for key, name in (("fid", "pool"), ("sfid", "spatial")):
            a, b = _gaussian(fake, samples.stats, name), _gaussian(real, reference.stats, name)
            if a is not None and b is not None:
                report[key] = frechet(a, b, method="sqrtm")  # the suite's (and pytorch-fid's) sqrtm form
        if pr is not None:
            report["precision"], report["recall"] = pr
    lite0_a, lite0_b = _gaussian(fake, samples.stats, "lite0"), _gaussian(real, reference.stats, "lite0")
    report["fd_lite0"] = None if lite0_a is None or lite0_b is None else frechet(lite0_b, lite0_a, method="eigh")
    report["num_samples"], report["num_reference"] = num_samples, num_reference
    return report


def _stored_pool(side: _Side) -> torch.Tensor | None:
    if side.stats is None or "pool" not in side.stats:
        return None
    return torch.from_numpy(side.stats["pool"])


def adm_table(report: dict) -> str:
    """The five numbers in the ADM suite's order, as it prints them."""
    lines = []
    for key, title in ADM_ORDER:
        value = report.get(key)
        lines.append(f"{title}: {'n/a' if value is None else f'{value:.4f}'}")
    return "\n".join(lines)


def _protocol(config, report, samples: _Side, reference: _Side, use_fid, nets, counts, usage, utilization_text,
              consistency_reason, classifier_info, notes) -> dict:
    """How every number was measured, in words a reader can compare against a paper's."""
    n, m = report["num_samples"], report["num_reference"]
    size = config.fd_image_size
    for what, (skipped, upscaled) in counts.items():
        if skipped:
            notes.append(f"{skipped} unreadable {what} files left out")
        if upscaled:
            notes.append(f"{upscaled} {what} images were smaller than {size} px and upscaled")
    for name, net in nets.items():
        if min(n, m) and min(n, m) <= net.dim:
            notes.append(f"{min(n, m)} images <= {net.dim} {name} feature dimensions: the Frechet distance is strongly "
                         "biased upwards at this size; use more samples (the paper uses 50,000)")
    if usage is not None and usage["num_tokens"] < MIN_TOKENS_PER_ENTRY * usage["codebook_size"]:
        notes.append(f"only {usage['num_tokens']} tokens for {usage['codebook_size']} entries: utilization is bounded by "
                     f"the number of tokens; generate >= {MIN_TOKENS_PER_ENTRY} tokens per entry")
    if usage is not None and samples.images is not None and usage["num_rows"] != len(samples):
        notes.append(f"{TOKENS_FILE} has {usage['num_rows']} rows but the folder holds {len(samples)} "
                     "sample images; they may come from different runs")
    accuracy = None if classifier_info is None else classifier_info["accuracy"]
    if classifier_info is not None and (accuracy is None or accuracy < LOW_CLASSIFIER_ACCURACY):
        notes.append(f"classifier held-out accuracy {accuracy}: class consistency is bounded by it and says little "
                     "about the generator")
    if report["guidance_scale"] is None and samples.kind == "folder":
        notes.append(f"guidance scale unknown: no guidance_scale in {samples.path / SAMPLER_REPORT}")
    for side in (samples, reference):
        info = (side.stats or {}).get("info", {})
        if side.stats is not None and info.get("fd_image_size") not in (None, size):
            notes.append(f"{side.path} was measured at {info['fd_image_size']} px, this run at {size} px: FD-lite0 "
                         "compares different protocols")
    if classifier_info is None:
        classifier = "not used"
        consistency = consistency_reason
    else:
        settings = classifier_info["settings"]
        classifier = (f"{settings['width']}-{2 * settings['width']}-{4 * settings['width']} channel 3-block CNN "
                      f"(GroupNorm), {settings['size']} px, trained {settings['epochs']} epochs (Adam, seed "
                      f"{settings['seed']}, random shifts) on {classifier_info['num_train']} reference images "
                      f"(at most {settings['max_per_class']} per class); classifier_accuracy = its accuracy on a "
                      f"seeded held-out {round(100 * settings['holdout_fraction'])}% "
                      f"({classifier_info['num_holdout']} images); cache key {classifier_info['key']}"
                      f"{' (loaded from cache)' if classifier_info.get('cached') else ''}")
        consistency = ("share of samples that the classifier assigns to the requested class (the class id of the "
                       "sample's folder or arr_1 label = the index in the reference's sorted class list); per class and "
                       "over all samples; classifier_accuracy is its ceiling")
    world = distributed.world_size()
    return {
        "samples": _describe(samples, n),
        "reference": _describe(reference, m),
        "windows": f"every readable image of both sides: {n} samples vs {m} reference images",
        "preprocessing": (f"image folders: short side resized to {size} px (PIL bicubic), centre crop {size}x{size}, "
                          "8-bit pixels; .npz batches: arr_0 as stored"),
        **_adm_protocol(config, report, use_fid, samples, reference, n, m),
        "fd_lite0": (f"Frechet distance between EfficientNet-Lite0 pooled head features ({nets['lite0'].dim}-d, "
                     f"{size} px) of reference vs samples, trace term by symmetric eigendecomposition; NOT comparable "
                     "with FID, compare values at equal fd_image_size and sample counts only"
                     if report["fd_lite0"] is not None else
                     "not computed: a statistics file without FD-lite0 moments and no images to measure them from"),
        "utilization": utilization_text,
        "class_consistency": consistency,
        "classifier": classifier,
        "guidance_scale": f"classifier-free guidance scale from {samples.path / SAMPLER_REPORT}",
        "distributed": (f"{world} processes: both sides split into contiguous slices, sums merged exactly (moments, "
                        "Inception Score splits, pool features, class counts)" if world > 1 else "single process"),
        "notes": notes,
    }


def _describe(side: _Side, count: int) -> str:
    if side.kind == "folder" and isinstance(side.images, NpzBatchImages):
        return f"{side.path.resolve()}: sampler folder, its ADM sample batch {SAMPLER_NPZ} ({count} images)"
    if side.kind == "folder":
        return f"{side.path.resolve()}: image folder, {count} images"
    if side.kind == "npz":
        return f"{side.path.resolve()}: ADM sample batch (arr_0 {side.images.reader.shape}), {count} images"
    info = side.stats.get("info", {})
    images = f"; arr_0 {side.images.reader.shape} streamed" if side.images is not None else ""
    return (f"{side.path.resolve()}: statistics file (mu, sigma, mu_s, sigma_s{images}; "
            f"{info.get('source', 'an ADM reference batch')})")


def _adm_protocol(config, report, use_fid, samples: _Side, reference: _Side, n: int, m: int) -> dict:
    if not use_fid:
        reason = "not computed: " + ("fid='off'" if config.fid == "off" else "FID Inception weights not found (fid='auto')")
        return dict.fromkeys(("inception_score", "fid", "sfid", "precision", "recall"), reason)
    network = (f"Inception-v3 of the 2015 TF graph in pytorch-fid's port ({inception.INCEPTION_FILENAME}); inputs as "
               "that graph takes them in the ADM suite: 8-bit RGB, TF 1.x bilinear resize to 299 px (align_corners="
               "False), (x - 128) / 128")

    def source(side: _Side, count: int, keys: str) -> str:
        if side.stats is not None and keys in ("mu", "mu_s") and keys in side.stats:
            return f"{side.what} {keys}/{'sigma' + keys[2:]} read from {side.path.name}"
        return f"{count} {side.what}"

    def missing(key: str, why: str) -> str | None:
        return None if report[key] is not None else f"not computed: {why}"

    splits = report["inception_score_splits"] or []
    pr_ref = ("the reference's stored pool features" if reference.stats is not None and "pool" in reference.stats
              else f"{min(m, config.pr_reference_images)} reference images" + (
                  f" (a seeded random subset of {m})" if m > config.pr_reference_images else ""))
    def frechet(features: str, key: str, how: str) -> str:
        return (f"ADM suite: Frechet distance of {features}, {source(samples, n, key)} vs {source(reference, m, key)}; "
                f"{how}. {network}")

    return {
        "inception_score": missing("inception_score", "the samples are statistics, not images") or (
            f"ADM suite: softmax of the 1008 logits pool_3 @ W (the graph's softmax/logits/MatMul, no bias) of {n} "
            f"samples, cut in their order into {len(splits)} split(s) of up to {IS_SPLIT_SIZE}; mean over splits of "
            f"exp(mean KL(p(y|x) || p(y))) (10 splits at 50,000 samples). {network}"),
        "fid": missing("fid", "a side has neither images nor mu/sigma") or frechet(
            "pool_3 features (2048-d)", "mu", "mean and covariance (n - 1), trace term by scipy sqrtm with the "
            "suite's eps fallback"),
        "sfid": missing("sfid", "a side has neither images nor mu_s/sigma_s") or frechet(
            "the spatial features mixed_6/conv (Mixed_6d's 1x1 branch after its ReLU, channels 0-6 of 17x17, "
            "flattened (h, w, c): 2,023-d)", "mu_s", "sqrtm as FID"),
        "precision": missing("precision", "pool features of both sides are needed (images, or a stats file's pool)") or (
            f"improved precision (Kynkaanniemi et al. 2019) as the ADM suite: share of the {n} samples within the "
            f"k = {PR_NEIGHBOURS} nearest-neighbour radius of some reference point, on pool_3 features of {pr_ref}; "
            "squared distances in float32 (the suite: float16, float32 when that overflows), in blocks"),
        "recall": missing("recall", "pool features of both sides are needed (images, or a stats file's pool)") or (
            f"improved recall as the ADM suite: share of {pr_ref} within the k = {PR_NEIGHBOURS} nearest-neighbour "
            f"radius of some sample, on pool_3 features of the {n} samples"),
    }


# ----------------------------------------------------------------------------- eval-gen stats


def _stats_header(config: StatsConfig, source, use_inception: bool) -> dict:
    return {"format": STATS_FORMAT, "source": str(Path(config.source).resolve()), "num_images": len(source),
            "fd_image_size": config.fd_image_size, "inception": use_inception,
            "pr_reference_images": config.pr_reference_images, "batch_size": config.batch_size,
            "world_size": distributed.world_size()}


def compute_reference_stats(config: StatsConfig) -> dict | None:
    """Statistics of a reference set, written once to `config.out` (.npz), resumable and sharded over ranks.

    The file holds the ADM suite's keys mu, sigma (pool_3, float64) and mu_s, sigma_s (spatial),
    `pool` ((M, 2048) float32 pool features of M <= pr_reference_images images, a seeded subset
    of a larger set, for precision / recall), mu_lite0 / sigma_lite0 (FD-lite0) and `info` (JSON:
    source, counts, sizes). Without Inception weights (fid='auto') it holds the FD-lite0 moments
    only. Progress is saved to OUT.partial/rank<R>.pt every `checkpoint_seconds` and when a call
    stops (`max_images`); a rerun with the same settings continues there. Returns the info on
    rank 0 once the file is written, else None.
    """
    config.validate()
    env = distributed.init(config.device)
    out = Path(config.out)
    if out.exists():
        raise ValueError(f"{out} already exists; choose another --out (statistics files are never overwritten)")
    path = Path(config.source)
    if path.is_dir():
        source = FolderImages(list_images(path), config.fd_image_size, config.workers)
    elif path.is_file() and path.suffix == ".npz":
        if "mu" in npz_keys(path):
            raise ValueError(f"{path} already holds statistics (mu, sigma, ...); pass it to eval-gen directly")
        source = NpzBatchImages(str(path))
    else:
        raise FileNotFoundError(f"stats source {path} does not exist or is not an image folder or an .npz sample batch")
    use_inception = _use_fid(config)
    check_writable_dir(out.parent if str(out.parent) else Path("."), "--out folder")
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(exist_ok=True)
    header = _stats_header(config, source, use_inception)
    nets = _feature_nets(use_inception, config, env.device)
    keep = _pr_positions(len(source), config.pr_reference_images) if use_inception else None
    side = SideFeatures(feature_dims(nets), keep=keep, device=env.device)
    lo, hi = distributed.slice_of(len(source))
    state_path = partial / f"rank{env.rank}.pt"
    start, skipped, upscaled = lo, 0, 0
    if state_path.is_file():
        state = torch.load(state_path, map_location=env.device, weights_only=True)
        if state["header"] != header:
            raise ValueError(f"{state_path} was begun with other settings or data; rerun with those, or delete "
                             f"{partial} to start over")
        side.load_state_dict(state["side"])
        start, skipped, upscaled = state["next"], state["skipped"], state["upscaled"]
    stop = hi if config.max_images is None else min(hi, start + config.max_images)

    def save(position: int, done_skipped: int, done_upscaled: int) -> None:
        atomic_torch_save({"header": header, "next": position, "skipped": skipped + done_skipped,
                           "upscaled": upscaled + done_upscaled, "side": side.state_dict()}, state_path)

    last = [time.monotonic()]

    def after_batch(position: int, done_skipped: int, done_upscaled: int) -> None:
        if time.monotonic() - last[0] >= config.checkpoint_seconds:
            save(position, done_skipped, done_upscaled)
            last[0] = time.monotonic()

    new_skipped, new_upscaled = _stream(source, side, _compute(nets, env.device), lo=start, hi=stop,
                                        batch_size=config.batch_size, desc=f"eval-gen stats: {path.name}",
                                        progress=config.progress, after_batch=after_batch)
    save(stop, new_skipped, new_upscaled)
    if not distributed.all_true(stop >= hi):
        return None
    side.all_reduce()
    num_skipped, num_upscaled = _summed(skipped + new_skipped, upscaled + new_upscaled)
    info = None
    if env.is_main:
        count = side.moments["lite0"].count
        if count < 2:
            raise ValueError(f"{path}: only {count} readable images; statistics need at least 2")
        info = {**header, "num_images": count, "num_listed": len(source), "num_skipped": num_skipped,
                "num_upscaled": num_upscaled, "pool_images": 0, "pool_dtype": "float32",
                "inception_resize": "tf1 (TF 1.x bilinear to 299 px, (x - 128) / 128: the ADM suite's graph input)"}
        arrays = {}
        for name, (mu, sigma) in (("pool", ("mu", "sigma")), ("spatial", ("mu_s", "sigma_s")),
                                  ("lite0", ("mu_lite0", "sigma_lite0"))):
            if name in side.moments:
                arrays[mu] = side.moments[name].mean.cpu().numpy()
                arrays[sigma] = side.moments[name].covariance.cpu().numpy()
        if use_inception:
            arrays["pool"] = side.kept_pool().cpu().numpy().astype(np.float32)
            info["pool_images"] = int(arrays["pool"].shape[0])
        arrays["info"] = np.array(json.dumps(info))
        atomic_write(out, lambda f: np.savez(f, **arrays))
    distributed.barrier()
    if env.is_main:
        shutil.rmtree(partial, ignore_errors=True)
    return info
