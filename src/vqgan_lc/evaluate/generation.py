"""Generated-sample evaluation (`vqgan-lc eval-gen`): FD-lite0 / FID, token utilization, class consistency.

The samples folder is what the sampler writes: `SAMPLES/<class id>/<NNNN>.png`, optionally
`SAMPLES/tokens.npy` ((n, L) integer token ids of the samples) and `SAMPLES/report.json`
(read here: `codebook_size`, `guidance_scale`). The reference folder holds the real images
the generator was trained on, in class sub-folders; as in the paper, the Frechet distances
compare the samples with these training images.

Memory stays bounded whatever the folder sizes: both folders are streamed in batches into
running feature moments, the token file is memory-mapped and counted in chunks, and class
consistency keeps per-class counts only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqgan_lc import distributed
from vqgan_lc.backbones import inception
from vqgan_lc.config import Config
from vqgan_lc.data import ImageDataset, class_names, collate_skip_corrupt, list_images
from vqgan_lc.evaluate.classifier import DEFAULT_SIZE as CLASSIFIER_SIZE
from vqgan_lc.evaluate.classifier import load_or_train_classifier, predict
from vqgan_lc.evaluate.evaluator import FID_CHOICES, MIN_TOKENS_PER_ENTRY, write_report
from vqgan_lc.evaluate.frechet import InceptionFeatures, Lite0Features, RunningMoments, frechet_from_moments
from vqgan_lc.files import check_writable_dir
from vqgan_lc.quantize.usage import UsageAccumulator

SAMPLER_REPORT = "report.json"
TOKENS_FILE = "tokens.npy"
TOKEN_CHUNK_ROWS = 4096  # rows of tokens.npy counted at a time: bounded memory for any number of samples
LOW_CLASSIFIER_ACCURACY = 0.9


@dataclass
class GenEvalConfig(Config):
    samples: str = ""  # the sampler's output folder: <class id>/<NNNN>.png (+ tokens.npy, report.json)
    reference: str = ""  # the real (training) images, in class sub-folders sorted like the generator's class ids
    out: str = ""  # report.json goes here
    fid: str = "auto"  # "auto" (FID when the Inception weights are on disk) | "inception" (required) | "off"
    fd_image_size: int = 256  # both sets are loaded at this size (short side, centre crop); a multiple of 32
    classifier_size: int = CLASSIFIER_SIZE  # the class-consistency classifier's input size
    batch_size: int = 32
    workers: int = 2  # image-decoding processes (0: decode in this process)
    device: str = "auto"
    cache_dir: str | None = None  # classifier cache root; default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc
    inception_weights: str | None = None  # FID Inception file; default $VQGAN_LC_INCEPTION or torch hub's cache
    progress: bool = True

    def check(self) -> None:
        if not self.samples or not self.reference or not self.out:
            raise ValueError("eval-gen needs the samples folder, --reference (the training images) and --out")
        if self.fid not in FID_CHOICES:
            raise ValueError(f"fid must be one of {FID_CHOICES}, got {self.fid!r}")
        if self.fd_image_size < 32 or self.fd_image_size % 32:
            raise ValueError(f"fd_image_size must be a positive multiple of 32 (e.g. 256), got {self.fd_image_size}")
        if self.classifier_size < 8 or self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"need classifier_size >= 8, batch_size >= 1 and workers >= 0, got {self.classifier_size}, "
                             f"{self.batch_size}, {self.workers}")


def _require_folder(path: str, what: str, hint: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist or is not a folder; {hint}")
    return folder


def _use_fid(config: GenEvalConfig) -> bool:
    available = inception.available(config.inception_weights)
    if config.fid == "inception" and not available:
        where = config.inception_weights or (f"put pytorch-fid's {inception.INCEPTION_FILENAME} in torch hub's "
                                             f"checkpoints folder or set ${inception.INCEPTION_ENV}")
        raise FileNotFoundError(f"fid='inception' but the FID Inception weights are not on disk ({where}); "
                                "supply them or use fid=auto / fid=off")
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
            if ids[name] >= len(reference_names):
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


def _loader(records, config: GenEvalConfig) -> DataLoader:
    # The dataset yields items at fd_image_size: short side resized (PIL bicubic), centre crop.
    dataset = ImageDataset(records, config.fd_image_size, train=False)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                      collate_fn=collate_skip_corrupt)


def _stream(records, config, device, nets: dict, desc: str, on_batch=None) -> dict:
    """Features of every readable image into running moments; returns moments and file counts."""
    moments = {name: RunningMoments(net.dim, device) for name, net in nets.items()}
    skipped = upscaled = 0
    bar = tqdm(total=len(records), desc=desc, unit="img", disable=not config.progress)
    with torch.no_grad():
        for batch in _loader(records, config):
            skipped += batch["num_skipped"]
            upscaled += batch["num_upscaled"]
            bar.update(batch["image"].shape[0] + batch["num_skipped"])
            if batch["image"].shape[0] == 0:  # every file of this batch was unreadable
                continue
            images = batch["image"].to(device)
            for name, net in nets.items():
                moments[name].update(net(images))
            if on_batch is not None:
                on_batch(images, batch["index"])
    bar.close()
    return {"moments": moments, "num_skipped": skipped, "num_upscaled": upscaled}


class _Consistency:
    """Per-class counts of samples and of samples the classifier assigns to their requested class."""

    def __init__(self, model, requested: list[int], num_classes: int):
        self.model = model
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
        per_class = {str(c): float(self.hits[c]) / float(self.total[c]) for c in torch.nonzero(present).flatten().tolist()}
        return overall, per_class


def evaluate_samples(config: GenEvalConfig) -> dict:
    """Evaluate the samples folder against the reference folder; writes and returns `OUT/report.json`.

    Report: fd_lite0, fid (only when computed), utilization / num_used / num_tokens /
    tokens_per_entry (null without tokens.npy + codebook_size), class_consistency,
    class_consistency_per_class ({class id as a string: share}), classifier_accuracy,
    num_samples, num_reference, guidance_scale, protocol (how each number was measured).

    One process does the whole evaluation: under torch.distributed the folders are not
    sharded, so launch it as a single process (every rank would repeat the same work).
    """
    config.validate()
    samples = _require_folder(config.samples, "samples folder", "pass the folder the sampler wrote")
    reference = _require_folder(config.reference, "reference folder", "pass the training image folder (class sub-folders)")
    if next(samples.iterdir(), None) is None:
        raise ValueError(f"samples folder {samples} is empty; run the sampler first or pass the folder it wrote")
    use_fid = _use_fid(config)  # before any work: fid='inception' without weights fails at once
    out = check_writable_dir(config.out, "--out folder")
    device = distributed.resolve_device(config.device)

    reference_records = list_images(reference)
    reference_names = class_names(reference_records)
    sample_records = _sample_listing(samples, reference_names)
    sampler, sampler_problem = _sampler_report(samples)
    notes = [sampler_problem] if sampler_problem else []

    requested = _sample_class_ids(sample_records, samples, reference_names)
    consistency = classifier_info = None
    if requested is None:
        consistency_reason = "not measured: the samples folder has no <class id> sub-folders"
    elif len(reference_names) < 2:
        consistency_reason = "not measured: the reference folder has fewer than 2 class sub-folders"
    else:
        model, classifier_info = load_or_train_classifier(reference, cache_dir=config.cache_dir,
                                                          size=config.classifier_size, device=device,
                                                          progress=config.progress)
        consistency = _Consistency(model, requested, len(reference_names))
        consistency_reason = ""

    nets = {"lite0": Lite0Features(size=config.fd_image_size).to(device)}
    if use_fid:
        nets["inception"] = InceptionFeatures(config.inception_weights).to(device)
    fake = _stream(sample_records, config, device, nets, "eval-gen: samples", consistency)
    real = _stream(reference_records, config, device, nets, "eval-gen: reference")
    num_samples, num_reference = fake["moments"]["lite0"].count, real["moments"]["lite0"].count
    if num_samples < 2 or num_reference < 2:
        raise ValueError(f"need at least 2 readable images in each folder for a Frechet distance, got {num_samples} "
                         f"samples and {num_reference} reference images")

    usage, utilization_text = _utilization(samples, sampler)
    report = {
        "fd_lite0": frechet_from_moments(real["moments"]["lite0"], fake["moments"]["lite0"], method="eigh"),
    }
    if use_fid:
        # FID keeps pytorch-fid's sqrtm form so that it compares with published numbers
        report["fid"] = frechet_from_moments(real["moments"]["inception"], fake["moments"]["inception"], method="sqrtm")
    report.update({
        "utilization": None if usage is None else float(usage["utilization"]),
        "num_used": None if usage is None else int(usage["num_used"]),
        "num_tokens": None if usage is None else int(usage["num_tokens"]),
        "tokens_per_entry": None if usage is None else usage["num_tokens"] / usage["codebook_size"],
        "codebook_size": None if usage is None else int(usage["codebook_size"]),
        "class_consistency": None,
        "class_consistency_per_class": None,
        "classifier_accuracy": None if classifier_info is None else classifier_info["accuracy"],
        "num_samples": num_samples,
        "num_reference": num_reference,
        "guidance_scale": sampler.get("guidance_scale"),
    })
    if consistency is not None:
        report["class_consistency"], report["class_consistency_per_class"] = consistency.result()
    report["protocol"] = _protocol(config, report, samples, reference, use_fid, nets, fake, real, usage,
                                   utilization_text, consistency_reason, classifier_info, notes)
    write_report(report, out / "report.json")
    return report


def _protocol(config, report, samples, reference, use_fid, nets, fake, real, usage, utilization_text,
              consistency_reason, classifier_info, notes) -> dict:
    """How every number was measured, in words a reader can compare against a paper's."""
    n, m = report["num_samples"], report["num_reference"]
    size = config.fd_image_size
    for what, data in (("samples", fake), ("reference", real)):
        if data["num_skipped"]:
            notes.append(f"{data['num_skipped']} unreadable {what} files left out")
        if data["num_upscaled"]:
            notes.append(f"{data['num_upscaled']} {what} images were smaller than {size} px and upscaled")
    for name, net in nets.items():
        if min(n, m) <= net.dim:
            notes.append(f"{min(n, m)} images <= {net.dim} {name} feature dimensions: the Frechet distance is strongly "
                         "biased upwards at this size; use more samples (the paper uses 50,000)")
    if usage is not None and usage["num_tokens"] < MIN_TOKENS_PER_ENTRY * usage["codebook_size"]:
        notes.append(f"only {usage['num_tokens']} tokens for {usage['codebook_size']} entries: utilization is bounded by "
                     f"the number of tokens; generate >= {MIN_TOKENS_PER_ENTRY} tokens per entry")
    if usage is not None and usage["num_rows"] != n + fake["num_skipped"]:
        notes.append(f"{TOKENS_FILE} has {usage['num_rows']} rows but the folder holds {n + fake['num_skipped']} "
                     "sample images; they may come from different runs")
    accuracy = None if classifier_info is None else classifier_info["accuracy"]
    if classifier_info is not None and (accuracy is None or accuracy < LOW_CLASSIFIER_ACCURACY):
        notes.append(f"classifier held-out accuracy {accuracy}: class consistency is bounded by it and says little "
                     "about the generator")
    if report["guidance_scale"] is None:
        notes.append(f"guidance scale unknown: no guidance_scale in {samples / SAMPLER_REPORT}")
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
                       "sample's folder = the index in the reference's sorted class list); per class and over all "
                       "samples; classifier_accuracy is its ceiling")
    return {
        "samples": f"{samples.resolve()}: {n} images",
        "reference": f"{reference.resolve()}: {m} images (real images; the paper compares samples with the generator's training set)",
        "windows": f"every readable image of both folders: {n} samples vs {m} reference images",
        "preprocessing": f"both folders: short side resized to {size} px (PIL bicubic), centre crop {size}x{size}; "
        "pixels in [-1, 1]",
        "fd_lite0": f"Frechet distance between EfficientNet-Lite0 pooled head features ({nets['lite0'].dim}-d, "
        f"{size} px) of reference vs samples, trace term by symmetric eigendecomposition; NOT comparable with FID, "
        "compare values at equal fd_image_size and sample counts only",
        "fid": (f"Frechet distance between FID Inception-v3 pool3 features (pytorch-fid weights "
                f"{inception.INCEPTION_FILENAME}, clean-fid bicubic resize from {size} to 299 px) of reference vs "
                "samples, trace term by scipy sqrtm as in pytorch-fid / clean-fid; the paper's FID is against the "
                "ImageNet training set at 50,000 samples"
                if use_fid
                else "not computed: " + ("fid='off'" if config.fid == "off" else
                                         "FID Inception weights not found (fid='auto')")),
        "utilization": utilization_text,
        "class_consistency": consistency,
        "classifier": classifier,
        "guidance_scale": f"classifier-free guidance scale from {samples / SAMPLER_REPORT}",
        "distributed": "single process; folders are not sharded under torch.distributed",
        "notes": notes,
    }
