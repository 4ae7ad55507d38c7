"""`vqgan-lc`: the command line. One thin module per stage parses arguments into a typed
config and calls one library function; nothing heavy is imported until a command runs, so
`vqgan-lc --help` answers at once.

A new stage adds a module here with `register(subparsers)` and lists it in `STAGES`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import codebook, demo, generate, tokenizer

STAGES = (tokenizer, codebook, generate, demo)

# Errors that end a command with one line on stderr and exit status 2 (no traceback).
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, OSError)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vqgan-lc", description="VQGAN-LC image tokenizers with huge frozen "
                                     "codebooks, and generators on their tokens and latents")
    parser.add_argument("--version", action="version", version=f"vqgan-lc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.DEBUG if args.verbose else logging.WARNING)  # its loader's probing
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if args.verbose:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"vqgan-lc {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a newline first: the message must not land on a progress bar's line
        print(f"\nvqgan-lc {args.command}: interrupted; completed checkpoints and outputs are kept", file=sys.stderr)
        return 130
