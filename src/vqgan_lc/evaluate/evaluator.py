"""Streaming tokenizer evaluation: codebook usage, PSNR / SSIM, perceptual distance, Frechet distances.

Memory stays bounded whatever the set size: per-image metrics are summed, usage is a
bincount over the codebook, and Frechet statistics are running moments. Under
torch.distributed every process evaluates its own shard and all sums are all-reduced, so
the report covers the whole set.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vqgan_lc import distributed
from vqgan_lc.config import Config
from vqgan_lc.backbones import inception
from vqgan_lc.data.transforms import to_uint8
from vqgan_lc.files import atomic_write_json
from vqgan_lc.evaluate.frechet import InceptionFeatures, Lite0Features, RunningMoments, frechet_from_moments
from vqgan_lc.data.grid import save_comparison_grid
from vqgan_lc.evaluate.metrics import psnr, psnr_y, ssim
from vqgan_lc.quantize.usage import UsageAccumulator
from vqgan_lc.backbones.perceptual import PERCEPTUAL_NAMES, build_perceptual, lpips_vgg_available

PERCEPTUAL_CHOICES = ("auto", *PERCEPTUAL_NAMES)
FID_CHOICES = ("auto", "inception", "off")  # FD-lite0 is always computed
# A uniformly used code of N entries needs about N*ln(10) ~ 2.3 N tokens before 90% of the
# entries are hit once; below ~10 N tokens a utilization < 1 says more about the set size.
MIN_TOKENS_PER_ENTRY = 10


@dataclass
class EvalConfig(Config):
    image_size: int | None = None  # every batch must hold image_size x image_size crops (None: the tokenizer's resolution)
    batch_size: int = 16  # for callers that build the loader
    max_images: int | None = None  # per process; None = the whole loader
    perceptual: str = "auto"  # "auto" (lpips-vgg when its weights are on disk, else perceptual-lite0) | "lpips-vgg" | "perceptual-lite0"
    fid: str = "auto"  # "auto" (rFID when the Inception weights are on disk) | "inception" (required) | "off"
    grid_images: int = 16  # originals/reconstruction pairs in the PNG grid
    fd_image_size: int = 256  # FD-lite0 resizes every image to this (a multiple of 32); compare values at equal sizes only
    dataset: str = ""  # what was evaluated, for the protocol (e.g. "ImageNet val, 50,000 images")
    preprocessing: str = "short side resized to image_size, centre crop"  # what the loader did, for the protocol
    inception_resize: str = "clean"  # "clean" (clean-fid's PIL bicubic) | "bilinear" (pytorch-fid)
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    inception_weights: str | None = None

    def check(self) -> None:
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {self.perceptual!r}")
        if self.fid not in FID_CHOICES:
            raise ValueError(f"fid must be one of {FID_CHOICES}, got {self.fid!r}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")
        if (self.image_size is not None and self.image_size < 32) or self.batch_size < 1 or self.grid_images < 0:
            raise ValueError(f"need image_size >= 32, batch_size >= 1, grid_images >= 0; got {self.image_size}, {self.batch_size}, {self.grid_images}")


def _round_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels an image file can hold."""
    return to_uint8(images).float() / 127.5 - 1


def _resolve_perceptual(config: EvalConfig) -> str:
    if config.perceptual != "auto":
        return config.perceptual
    return "lpips-vgg" if lpips_vgg_available(config.vgg_weights, config.lpips_weights) else "perceptual-lite0"


def _resolve_fid(config: EvalConfig) -> bool:
    if config.fid == "inception" and not inception.available(config.inception_weights):
        inception.load_fid_inception(config.inception_weights)  # raises the one-line "how to supply" error
    return config.fid == "inception" or (config.fid == "auto" and inception.available(config.inception_weights))


def _with_image_size(config: EvalConfig, model) -> EvalConfig:
    """`config` with image_size set: None means the tokenizer's own resolution."""
    if config.image_size is not None:
        return config
    resolution = getattr(getattr(getattr(model, "config", None), "autoencoder", None), "resolution", None)
    if resolution is None:
        raise ValueError("EvalConfig.image_size is None and the model has no config.autoencoder.resolution; "
                         "set image_size to the side of the loader's crops")
    return dataclasses.replace(config, image_size=int(resolution))


def evaluate_tokenizer(model, loader, config: EvalConfig, *, device="cpu", grid_path=None, progress: bool = True) -> dict:
    """Evaluate `model` on every batch {"image": (B,3,H,W) in [-1, 1]} of `loader`; returns the report.

    `model(images)` must return an object with `.reconstruction` (B,3,H,W) and
    `.quantizer.indices` (B,h,w); `model.codebook_size` is the codebook size.
    """
    device = torch.device(device)
    core = getattr(model, "module", model)  # DDP-wrapped or not
    config = _with_image_size(config.validate(), core)
    perceptual_name = _resolve_perceptual(config)
    perceptual = build_perceptual(perceptual_name, vgg_weights=config.vgg_weights, lpips_weights=config.lpips_weights).to(device)
    lite0 = Lite0Features(size=config.fd_image_size).to(device)
    incep = InceptionFeatures(config.inception_weights, config.inception_resize).to(device) if _resolve_fid(config) else None
    moments = {k: RunningMoments(lite0.dim, device) for k in ("lite0_real", "lite0_fake")}
    if incep is not None:
        moments.update({k: RunningMoments(incep.dim, device) for k in ("incep_real", "incep_fake")})
    usage = UsageAccumulator(core.codebook_size, device=device)
    # num_images; sums of psnr, psnr_y, ssim, perceptual over images; num_skipped; num_upscaled
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    grid_real, grid_fake = [], []
    seen = 0
    was_training = model.training
    model.eval()
    total = config.max_images or len(getattr(loader, "dataset", ())) or None
    bar = tqdm(total=total, desc="eval", unit="img", disable=not (progress and distributed.is_main()))
    with torch.no_grad():
        for batch in loader:
            if not isinstance(batch, dict) or "image" not in batch:
                raise ValueError("evaluate_tokenizer: loader batches must be dicts with an 'image' tensor (B,3,H,W)")
            images = batch["image"]
            # unreadable files are dropped by the data pipeline; count them, and the upscaled ones
            sums[5] += float(batch.get("num_skipped", 0))
            sums[6] += float(batch.get("num_upscaled", 0))
            if images.shape[0] == 0:  # every file of this batch was unreadable
                continue
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, config.image_size, config.image_size):
                raise ValueError(f"evaluate_tokenizer: expected images (B,3,{config.image_size},{config.image_size}), got {tuple(images.shape)}")
            if config.max_images is not None:
                images = images[: config.max_images - seen]
            images = _round_8bit(images.to(device))
            out = model(images)
            # The 8-bit rounding would turn NaN/inf into a plausible image with a finite,
            # meaningless PSNR; a report must never hold metrics of such output.
            if not bool(torch.isfinite(out.reconstruction).all()):
                bar.close()
                model.train(was_training)
                raise ValueError(f"evaluate_tokenizer: the model produced non-finite reconstructions (NaN or Inf) "
                                 f"after {seen} good images; the checkpoint is corrupt or diverged, evaluate an "
                                 "earlier one")
            recon = _round_8bit(out.reconstruction)
            usage.update(out.quantizer.indices)
            sums[:5] += torch.stack([
                torch.tensor(float(images.shape[0]), device=device),
                psnr(images, recon).double().sum(),
                psnr_y(images, recon).double().sum(),
                ssim(images, recon).double().sum(),
                perceptual(images, recon).double().sum(),
            ]).to(sums)
            moments["lite0_real"].update(lite0(images))
            moments["lite0_fake"].update(lite0(recon))
            if incep is not None:
                moments["incep_real"].update(incep(images))
                moments["incep_fake"].update(incep(recon))
            if len(grid_real) < config.grid_images:
                take = config.grid_images - len(grid_real)
                grid_real.extend(images[:take].cpu())
                grid_fake.extend(recon[:take].cpu())
            seen += images.shape[0]
            bar.update(images.shape[0])
            if config.max_images is not None and seen >= config.max_images:
                break
    bar.close()
    model.train(was_training)

    distributed.all_reduce(sums)
    usage.all_reduce()
    for m in moments.values():
        m.all_reduce()
    num_images = int(sums[0].item())
    if num_images < 2:
        raise RuntimeError(f"evaluate_tokenizer: need at least 2 readable images, the loader gave {num_images} "
                           f"({int(sums[5].item())} unreadable skipped)")
    means = (sums[1:5] / num_images).tolist()
    stats = usage.stats()
    report = {
        "codebook_size": int(stats["codebook_size"]),
        "utilization": float(stats["utilization"]),
        "perplexity": float(stats["perplexity"]),
        "normalized_entropy": float(stats["normalized_entropy"]),
        "num_tokens": int(stats["num_tokens"]),
        "num_used": int(stats["num_used"]),
        "top1_share": float(stats["top1_share"]),
        "tokens_per_entry": int(stats["num_tokens"]) / int(stats["codebook_size"]),
        "psnr": means[0],
        "psnr_y": means[1],
        "ssim": means[2],
        "perceptual": means[3],
        "perceptual_name": perceptual_name,
        # FD-lite0 is this project's own number: the fast eigh form; rFID keeps pytorch-fid's sqrtm
        "fd_lite0": frechet_from_moments(moments["lite0_real"], moments["lite0_fake"], method="eigh"),
        "num_images": num_images,
        "num_skipped": int(sums[5].item()),  # unreadable files left out
        "num_upscaled": int(sums[6].item()),  # images smaller than image_size, upsampled by the loader
    }
    if incep is not None:
        report["rfid"] = frechet_from_moments(moments["incep_real"], moments["incep_fake"], method="sqrtm")
    report["protocol"] = _protocol(config, report, perceptual_name, incep is not None, lite0.dim)
    if grid_path is not None and grid_real and distributed.is_main():
        save_comparison_grid(torch.stack(grid_real), torch.stack(grid_fake), grid_path, max_images=config.grid_images)
    return report


def _protocol(config: EvalConfig, report: dict, perceptual_name: str, has_rfid: bool, lite0_dim: int) -> dict:
    """How every number was measured, in words a reader can compare against a paper's."""
    n, tokens, codes = report["num_images"], report["num_tokens"], report["codebook_size"]
    perceptual = {
        "lpips-vgg": "LPIPS v0.1, VGG16 (torchvision ImageNet weights) with the lpips package's linear layers",
        "perceptual-lite0": "LPIPS-style distance on EfficientNet-Lite0 stride 4/8/16/32 features, equal channel "
        "weights (no learned linear layers); NOT comparable with published LPIPS",
    }[perceptual_name]
    notes = []
    if tokens < MIN_TOKENS_PER_ENTRY * codes:
        notes.append(
            f"only {tokens} tokens for {codes} entries ({tokens / codes:.2f} per entry): even a uniformly used "
            f"codebook needs ~2.3 tokens per entry to reach 90% utilization, so evaluate >= {MIN_TOKENS_PER_ENTRY} per entry"
        )
    if n <= lite0_dim:
        notes.append(f"{n} images <= {lite0_dim} feature dimensions: Frechet distances are strongly biased upwards at this size")
    return {
        "dataset": config.dataset or "unnamed (set EvalConfig.dataset)",
        "preprocessing": f"{config.preprocessing}; {config.image_size}x{config.image_size} px; pixels in [-1, 1]",
        "rounding": "originals and reconstructions clamped to [-1, 1] and rounded to 8 bits before every metric",
        "token_window": f"whole evaluated set: {n} images, {tokens} tokens",
        "utilization": "distinct entries used at least once / codebook_size; perplexity = exp(entropy of usage); "
        "normalized_entropy = entropy / ln(codebook_size); top1_share = share of tokens on the 1% most used entries",
        "psnr": "RGB, peak 255, per-image PSNR averaged over images",
        "psnr_y": "BT.601 studio-swing luma (MATLAB rgb2ycbcr Y, 16..235), peak 255, per-image average",
        "ssim": "Gaussian window 11x11 sigma 1.5, K1 0.01 K2 0.03, data range 1 on [0, 1], valid positions, "
        "RGB channel mean, per-image average; in [0, 1] (papers often print x100)",
        "perceptual": perceptual,
        "fd_lite0": f"Frechet distance between EfficientNet-Lite0 pooled head features ({lite0_dim}-d, images "
        f"resized to {config.fd_image_size} px) of originals vs reconstructions, trace term by symmetric eigendecomposition; "
        "NOT comparable with FID",
        "rfid": (
            "Frechet distance between FID Inception-v3 pool3 features (pytorch-fid weights "
            f"{inception.INCEPTION_FILENAME}, {config.inception_resize} resize to 299 px) of originals vs "
            "reconstructions, trace term by scipy sqrtm as in pytorch-fid / clean-fid"
            if has_rfid
            else "not computed: FID Inception weights not found or fid='off'"
        ),
        "notes": notes,
    }


def _json_safe(value):
    """Non-finite floats (PSNR of identical images is inf) become the strings "inf", "-inf",
    "nan" so the file stays strict JSON; float(value) reads them back."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict, path) -> None:
    """Write the report as indented JSON, atomically (a reader never sees a partial file)."""
    atomic_write_json(path, _json_safe(report))


@torch.no_grad()
def token_usage(model, loader, device="cpu", marks: tuple[int, ...] = ()) -> dict:
    """`usage_stats` of the token ids `model.encode` gives for every batch of `loader`, without the
    image metrics: utilization over a window larger than the metrics need.

    With `marks` (token counts), `stats["curve"]` also gives the stats of the window's first
    `mark` tokens (images in loader order, tokens in row order) for each mark the window
    reaches: how utilization grows with the window's length, from one encoding pass."""
    usage = UsageAccumulator(model.codebook_size, device=device)
    pending, curve, seen = sorted(set(marks)), [], 0
    for batch in loader:
        indices = model.encode(batch["image"].to(device)).indices.flatten()
        start = 0  # `seen` counts the tokens before this batch
        while pending and pending[0] - seen <= len(indices):  # a mark falls inside this batch
            cut = pending.pop(0) - seen
            usage.update(indices[start:cut])
            start = cut
            curve.append({**usage.stats(), "num_tokens": seen + cut})
        usage.update(indices[start:])
        seen += len(indices)
    stats = usage.stats()
    return {**stats, "curve": curve} if marks else stats


def run_evaluation(model, loader, out_dir, config: EvalConfig, *, device="cpu", progress: bool = True) -> dict:
    """Evaluate and write `out_dir/report.json` and `out_dir/reconstructions.png` (main process only)."""
    out_dir = Path(out_dir)
    report = evaluate_tokenizer(model, loader, config, device=device, grid_path=out_dir / "reconstructions.png", progress=progress)
    if distributed.is_main():
        write_report(report, out_dir / "report.json")
    return report


def evaluate_checkpoint(checkpoint, data: str, out_dir, config: EvalConfig, *, device: str = "auto",
                        progress: bool = True) -> dict | None:
    """`vqgan-lc eval`: load a tokenizer folder, evaluate it on `data`, write the report.

    Under `torchrun` every process evaluates a contiguous slice of the set and the statistics
    (sums, usage counts, Frechet moments) are all-reduced, so the report covers the whole set
    and equals a single-process run. Returns the report on the main process, None elsewhere."""
    from torch.utils.data import DataLoader, Subset

    from vqgan_lc.data import build_dataset, collate_skip_corrupt
    from vqgan_lc.tokenizer.model import VQModel

    env = distributed.init(device)
    model = VQModel.from_pretrained(checkpoint).to(env.device).eval()
    config = _with_image_size(config.validate(), model)
    dataset = build_dataset(data, config.image_size, train=False)
    lo, hi = distributed.slice_of(len(dataset))
    loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=config.batch_size, shuffle=False,
                        collate_fn=collate_skip_corrupt)
    report = run_evaluation(model, loader, out_dir, config, device=env.device, progress=progress)
    return report if env.is_main else None

