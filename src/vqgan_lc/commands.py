"""What the `eval`, `reconstruct`, `encode`, `decode` and `export` commands do (cli.py only parses)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import EvalTransform, ImageError, build_dataset, collate_skip_corrupt, from_tensor, load_image
from .tokenizer.model import VQModel


def _device(name: str = "auto") -> torch.device:
    from .train.distributed import resolve_device
    return resolve_device(name)


def load_tokenizer(path: str, device: torch.device) -> VQModel:
    return VQModel.from_pretrained(path).to(device).eval()


def run_eval(args: argparse.Namespace) -> dict:
    from .evaluate.evaluator import EvalConfig, run_evaluation

    device = _device(args.device)
    model = load_tokenizer(args.checkpoint, device)
    size = args.image_size or model.config.autoencoder.resolution
    dataset = build_dataset(args.data, size, train=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collate_skip_corrupt)
    config = EvalConfig(image_size=size, batch_size=args.batch_size, max_images=args.max_images,
                        perceptual=args.perceptual, fid=args.fid, fd_image_size=args.fd_image_size,
                        dataset=str(args.data))
    report = run_evaluation(model, loader, args.out, config, device=device)
    print(f"utilization {report['utilization']:.4f} over {report['num_tokens']} tokens | PSNR {report['psnr']:.2f} "
          f"| SSIM {report['ssim']:.4f} | {report['perceptual_name']} {report['perceptual']:.4f} "
          f"| FD-lite0 {report['fd_lite0']:.3f} -> {Path(args.out) / 'report.json'}")
    return report


def _load_batch(paths: list[str], size: int) -> tuple[torch.Tensor, list[str]]:
    transform = EvalTransform(size)
    images, kept = [], []
    for path in paths:
        try:
            images.append(transform(load_image(path)))
            kept.append(path)
        except ImageError as err:
            print(f"skipped: {err}")
    if not images:
        raise ValueError("none of the given images could be read")
    return torch.stack(images), kept


def _image_batches(args: argparse.Namespace, model: VQModel, batch_size: int = 8):
    size = args.image_size or model.config.autoencoder.resolution
    for i in tqdm(range(0, len(args.images), batch_size), unit="batch", disable=len(args.images) <= batch_size):
        yield _load_batch(args.images[i:i + batch_size], size)


def reconstruct(args: argparse.Namespace) -> None:
    model = load_tokenizer(args.checkpoint, _device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for images, paths in _image_batches(args, model):
            recon = model(images.to(next(model.parameters()).device)).reconstruction.cpu()
            for path, image in zip(paths, recon):
                from_tensor(image.clamp(-1, 1)).save(out / f"{Path(path).stem}.png")
    print(f"reconstructions written to {out}")


def encode(args: argparse.Namespace) -> None:
    model = load_tokenizer(args.checkpoint, _device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for images, paths in _image_batches(args, model):
            indices = model.encode(images.to(next(model.parameters()).device)).indices.cpu().numpy()
            dtype = np.int32 if model.num_codes < 2**31 else np.int64
            for path, idx in zip(paths, indices):
                np.save(out / f"{Path(path).stem}.npy", idx.astype(dtype))
    print(f"token indices ({model.token_grid(args.image_size)} per image) written to {out}")


def decode(args: argparse.Namespace) -> None:
    model = load_tokenizer(args.checkpoint, _device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        for path in args.indices:
            try:
                idx = np.load(path)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} is not a .npy array of token indices ({err})") from None
            if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"{path}: expected a 2-D integer array (h, w), got {idx.dtype} {idx.shape}")
            image = model.decode_indices(torch.from_numpy(idx.astype(np.int64))[None].to(device))[0].cpu()
            from_tensor(image.clamp(-1, 1)).save(out / f"{Path(path).stem}.png")
    print(f"decoded images written to {out}")


def export(args: argparse.Namespace) -> None:
    from .tokenizer.checkpoint import export_for_inference
    model = load_tokenizer(args.checkpoint, torch.device("cpu"))
    export_for_inference(model).save_pretrained(args.out)
    print(f"inference export (projected {model.num_codes} x {model.quantizer.dim} codebook) written to {args.out}")
