"""`vqgan-lc codebook build | info`: thin handlers over the codebook library.

    vqgan-lc codebook build DATA --size N [--backbone NAME] [--per-class | --global] --out FILE
    vqgan-lc codebook info FILE

Features are cached under --cache-dir (default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc) in a
folder keyed by dataset fingerprint + backbone + layer + pooling, so a second build with
another --size or mode skips extraction. Under `torchrun`, every rank extracts its slice
and rank 0 runs k-means and writes the file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from vqgan_lc.codebook.build import CODEBOOK_MODES

DEFAULT_CACHE = os.path.join("~", ".cache", "vqgan-lc")


def add_codebook_commands(subparsers) -> None:
    parser = subparsers.add_parser("codebook", help="build a codebook by k-means over backbone features, or inspect one")
    sub = parser.add_subparsers(dest="codebook_command", required=True)

    p = sub.add_parser("build", help="extract features of DATA (cached) and cluster them into a codebook file")
    p.add_argument("data", help="image folder (class sub-folders -> labels; flat -> unlabelled) or a .txt file list")
    p.add_argument("--size", type=int, required=True, help="number of codebook entries N")
    p.add_argument("--out", required=True, help="codebook file to write (.safetensors)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="feature backbone (efficientnet-lite0, clip-vit-l14, ...)")
    p.add_argument("--backbone-weights", help="local weights file or folder for the backbone")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--per-class", dest="mode", action="store_const", const="per-class",
                      help="k-means inside each class, size/classes entries each (the paper)")
    mode.add_argument("--global", dest="mode", action="store_const", const="global",
                      help="one k-means over all vectors (class-free data)")
    mode.add_argument("--mode", dest="mode", choices=CODEBOOK_MODES,
                      help="also random-select / gaussian (the Table 6 baselines)")
    p.set_defaults(mode="auto")
    p.add_argument("--pool", type=int, default=4, help="average-pool each feature grid to POOLxPOOL vectors (paper: 4)")
    p.add_argument("--iters", type=int, default=20, help="k-means iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("random", "k-means++"), default="random", help="k-means seeding")
    p.add_argument("--assign", choices=("auto", "exact", "ivf"), default="auto",
                   help="nearest-centroid search inside k-means (auto: ivf for large sizes on CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--shard-mb", type=float, default=256, help="size of each feature shard file")
    p.add_argument("--cache-dir", help=f"feature cache root (default $VQGAN_LC_CACHE or {DEFAULT_CACHE})")
    p.add_argument("--features-dir", help="exact folder for this dataset's features (overrides the cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_build)

    p = sub.add_parser("info", help="print a codebook file's size and metadata")
    p.add_argument("file")
    p.set_defaults(func=run_info)


def _device(name: str) -> str:
    from vqgan_lc.train.distributed import resolve_device

    return str(resolve_device(name))


def _init_distributed(device: str) -> None:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def run_build(args: argparse.Namespace) -> int:
    from vqgan_lc.backbones import build_backbone
    from vqgan_lc.codebook.build import build_codebook_from_vectors
    from vqgan_lc.codebook.feature_store import dataset_fingerprint, features_key
    from vqgan_lc.codebook.features import ExtractConfig, extract_features
    from vqgan_lc.codebook.io import save_codebook
    from vqgan_lc.data import list_images

    records = list_images(args.data)  # ImageError is a ValueError: one line from the CLI
    device = _device(args.device)
    _init_distributed(device)
    backbone = build_backbone(args.backbone, args.backbone_weights)
    origin = {**backbone.describe(), "weights": os.path.abspath(args.backbone_weights) if args.backbone_weights else None}
    fingerprint = dataset_fingerprint(records)
    folder = args.features_dir or os.path.join(
        os.path.expanduser(args.cache_dir or os.environ.get("VQGAN_LC_CACHE", DEFAULT_CACHE)),
        "features", features_key(fingerprint, origin, args.pool))
    config = ExtractConfig(pool=args.pool, batch_size=args.batch_size, shard_mb=args.shard_mb,
                           num_workers=args.workers, device=device, progress=not args.no_progress)
    store = extract_features(records, backbone, folder, config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    labels = store.vector_labels()
    mode = args.mode if args.mode != "auto" else ("per-class" if labels is not None else "global")
    started = time.time()
    vectors, info = build_codebook_from_vectors(store.vectors, labels, args.size, mode, args.seed, iters=args.iters,
                                                assign=args.assign, init=args.init)
    manifest = store.manifest
    metadata = {
        **store.origin(), **info, "num_images": store.num_images, "num_skipped": manifest["num_skipped"],
        "backbone_weights": origin["weights"] or "default", "features": folder,
    }
    if mode == "per-class":
        metadata["class_names"] = [manifest["class_names"][c] for c in info["classes"]]
    save_codebook(args.out, vectors, metadata)
    inertia = f", inertia {info['inertia']:.6g}" if "inertia" in info else ""
    print(f"codebook: {args.size} x {vectors.shape[1]} ({mode}) from {info['num_vectors']} vectors of "
          f"{store.num_images} images in {time.time() - started:.1f} s{inertia} -> {args.out}")
    if "cluster_size_histogram" in info:
        bins = "  ".join(f"{lo}-{hi}:{count}" for lo, hi, count in info["cluster_size_histogram"] if count)
        print(f"cluster sizes (vectors per entry: count): {bins}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from vqgan_lc.codebook.io import describe_codebook, load_codebook

    print(describe_codebook(load_codebook(args.file), args.file))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m vqgan_lc.codebook.cli ...`); the package CLI mounts the same parser."""
    parser = argparse.ArgumentParser(prog="vqgan-lc")
    add_codebook_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"vqgan-lc codebook: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
