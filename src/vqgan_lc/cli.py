"""`vqgan-lc` command line: a thin layer that parses arguments and calls the library."""
from __future__ import annotations

import argparse
import logging
import sys


def _train(args: argparse.Namespace) -> None:
    from .train.config import apply_overrides, get_recipe
    from .train.trainer import train

    config = get_recipe(args.recipe)
    if args.data:
        config.data = args.data
    if args.out:
        config.out_dir = args.out
    apply_overrides(config, args.set)
    result = train(config, resume=args.resume)
    if result.is_main:
        print(f"trained {result.step} steps; tokenizer saved in {result.out_dir / 'tokenizer'}")


def _eval(args: argparse.Namespace) -> None:
    from .commands import run_eval
    run_eval(args)


def _tokens(args: argparse.Namespace) -> None:
    from . import commands
    getattr(commands, args.command)(args)


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo
    config = DemoConfig.quick() if args.quick else DemoConfig()
    config.out_dir = args.out
    run_demo(config)


def _presets(args: argparse.Namespace) -> None:
    from .tokenizer.config import PRESETS, get_preset
    from .train.config import RECIPES
    print("tokenizer presets:")
    for name in sorted(PRESETS):
        cfg = get_preset(name)
        q, ae = cfg.quantizer, cfg.autoencoder
        print(f"  {name:22s} {q.kind:4s} N={q.codebook_size:<7d} D'={q.dim:<4d} f{ae.downsample_factor} {ae.resolution}px")
    print("training recipes:", ", ".join(sorted(RECIPES)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgan-lc", description="VQGAN-LC image tokenizers with huge frozen codebooks")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a tokenizer (run under torchrun for several processes)")
    p.add_argument("recipe", help="a recipe name (see `vqgan-lc presets`) or a training config .json")
    p.add_argument("--data", help="image folder, .txt list, or 'demo'")
    p.add_argument("--out", help="run folder (checkpoints, tensorboard, samples)")
    p.add_argument("--resume", help="continue the run in this folder exactly where it stopped")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. lr=1e-4 loss.disc_start=1000")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a tokenizer: utilization, PSNR, SSIM, perceptual, FD-lite0, rFID")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="image folder, .txt list, or 'demo:eval'")
    p.add_argument("--out", required=True, help="folder for report.json and the reconstruction grid")
    p.add_argument("--image-size", type=int, help="default: the tokenizer's resolution")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int)
    p.add_argument("--perceptual", default="auto", help="auto | lpips-vgg | perceptual-lite0")
    p.add_argument("--fid", default="auto", help="auto (rFID when Inception weights are on disk) | inception | off")
    p.add_argument("--fd-image-size", type=int, default=256, help="size FD-lite0 resizes images to")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval)

    p = sub.add_parser("reconstruct", help="encode and decode images")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int)
    p.set_defaults(func=_tokens)

    p = sub.add_parser("encode", help="images -> token indices (.npy, one per image)")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int)
    p.set_defaults(func=_tokens)

    p = sub.add_parser("decode", help="token indices (.npy) -> images (.png)")
    p.add_argument("checkpoint")
    p.add_argument("indices", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_tokens)

    p = sub.add_parser("export", help="inference export: keep only the projected N x D' codebook")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_tokens)

    p = sub.add_parser("demo", help="build a codebook, train VQGAN-LC and VQGAN on bundled photos, compare")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds) for smoke tests")
    p.set_defaults(func=_demo)

    p = sub.add_parser("presets", help="list tokenizer presets and training recipes")
    p.set_defaults(func=_presets)

    try:
        from .codebook.cli import add_codebook_commands
    except ImportError:  # pragma: no cover - the codebook package is part of the install
        pass
    else:
        add_codebook_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as err:
        if args.verbose:
            raise
        print(f"vqgan-lc {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqgan-lc {args.command}: interrupted; completed checkpoints are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
