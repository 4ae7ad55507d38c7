"""`vqgan-lc codebook build | info`: codebooks by k-means over backbone features.

    vqgan-lc codebook build DATA --size N [--backbone NAME] [--per-class | --global] --out FILE
    vqgan-lc codebook info FILE
"""
from __future__ import annotations

from . import common

CODEBOOK_MODES = ("per-class", "global", "random-select", "gaussian")  # checked again by the library


def register(sub) -> None:
    parser = sub.add_parser("codebook", help="build a codebook by k-means over backbone features, or inspect one")
    cb = parser.add_subparsers(dest="codebook_command", required=True, metavar="SUBCOMMAND")

    p = cb.add_parser("build", help="extract features of DATA (cached) and cluster them into a codebook file",
                      parents=[common.parent(common.device, common.download)])
    p.add_argument("data", help="image folder (class sub-folders -> labels; flat -> unlabelled) or a .txt file list")
    p.add_argument("--size", type=common.positive_int, required=True, help="number of codebook entries N")
    p.add_argument("--out", required=True, help="codebook file to write (.safetensors)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="feature backbone (efficientnet-lite0, clip-vit-l14, ...)")
    p.add_argument("--backbone-weights", help="local weights file or folder for the backbone")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--per-class", dest="mode", action="store_const", const="per-class",
                      help="k-means inside each class, size/classes entries each (the paper)")
    mode.add_argument("--global", dest="mode", action="store_const", const="global",
                      help="one k-means over all vectors (class-free data)")
    mode.add_argument("--mode", dest="mode", choices=CODEBOOK_MODES, help="also random-select / gaussian (Table 6)")
    p.set_defaults(mode="auto")
    p.add_argument("--pool", type=common.positive_int, default=4, help="average-pool each feature grid to POOLxPOOL vectors (paper: 4)")
    p.add_argument("--no-pool", dest="pool", action="store_const", const=None, help="keep every grid cell (more vectors per image)")
    p.add_argument("--input-size", type=common.positive_int, help="image size fed to the backbone (default: its own)")
    p.add_argument("--iters", type=common.positive_int, default=20, help="k-means iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("random", "k-means++"), default="random", help="k-means seeding")
    p.add_argument("--assign", choices=("auto", "exact", "ivf"), default="auto",
                   help="nearest-centroid search inside k-means (auto: ivf for large sizes on CPU)")
    p.add_argument("--batch-size", type=common.positive_int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--shard-mb", type=float, default=256, help="size of each feature shard file")
    p.add_argument("--cache-dir", help="feature cache root (default $VQGAN_LC_CACHE or ~/.cache/vqgan-lc)")
    p.add_argument("--features-dir", help="exact folder for this dataset's features (overrides the cache)")
    p.add_argument("--exemplars", type=int, default=8, metavar="K",
                   help="record the K feature vectors nearest to each entry (image, grid cell) in CODEBOOK.exemplars.npz "
                        "beside the codebook, for `vqgan-lc app` (0: none)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=build)

    p = cb.add_parser("info", help="print a codebook file's size and metadata")
    p.add_argument("file")
    p.set_defaults(func=info)


def build(args) -> int:
    from ..codebook.folder import CodebookBuildConfig, build_codebook_file

    config = CodebookBuildConfig(
        data=args.data, size=args.size, out=args.out, backbone=args.backbone, backbone_weights=args.backbone_weights,
        mode=args.mode, pool=args.pool, input_size=args.input_size, iters=args.iters, seed=args.seed, init=args.init, assign=args.assign,
        batch_size=args.batch_size, workers=args.workers, shard_mb=args.shard_mb, cache_dir=args.cache_dir,
        features_dir=args.features_dir, device=args.device, progress=not args.no_progress,
        exemplars=args.exemplars)
    build_codebook_file(config.validate())
    return 0


def info(args) -> int:
    from ..codebook.io import describe_codebook, load_codebook
    print(describe_codebook(load_codebook(args.file), args.file))
    return 0
