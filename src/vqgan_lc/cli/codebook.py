"""`vqgan-lc codebook build | info`: codebooks by k-means over backbone features.

    vqgan-lc codebook build DATA --size N [--backbone NAME] [--per-class | --global] --out FILE
    vqgan-lc codebook info FILE
"""
from __future__ import annotations

from ..codebook.config import CODEBOOK_MODES, CodebookBuildConfig
from . import common


def register(sub) -> None:
    parser = sub.add_parser("codebook", help="build a codebook by k-means over backbone features, or inspect one")
    cb = parser.add_subparsers(dest="codebook_command", required=True, metavar="SUBCOMMAND")

    p = cb.add_parser("build", help="extract features of DATA (cached) and cluster them into a codebook file",
                      parents=[common.parent(common.device, common.download)])
    # every other flag comes from CodebookBuildConfig: its types, defaults and comments
    common.add_config_flags(p, CodebookBuildConfig, positional=("data",), required=("codebook_size", "out"),
                            skip=("mode", "device"), aliases={"codebook_size": ("--size",)})
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--per-class", dest="mode", action="store_const", const="per-class",
                      help="k-means inside each class, size/classes entries each (the paper)")
    mode.add_argument("--global", dest="mode", action="store_const", const="global",
                      help="one k-means over all vectors (class-free data)")
    mode.add_argument("--mode", dest="mode", choices=CODEBOOK_MODES, help="also random-select / gaussian (Table 6)")
    p.set_defaults(mode=CodebookBuildConfig.mode)
    p.add_argument("--no-pool", dest="pool", action="store_const", const=None, help="keep every grid cell (more vectors per image)")
    p.set_defaults(func=build)

    p = cb.add_parser("info", help="print a codebook file's size and metadata")
    p.add_argument("file")
    p.set_defaults(func=info)


def build(args) -> int:
    from ..codebook.folder import build_codebook_file

    build_codebook_file(common.config_from_args(CodebookBuildConfig, args).validate())
    return 0


def info(args) -> int:
    from ..codebook.io import describe_codebook, load_codebook
    print(describe_codebook(load_codebook(args.file), args.file))
    return 0
