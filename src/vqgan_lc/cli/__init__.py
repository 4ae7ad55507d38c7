"""`vqgan-lc`: the command line. One thin module per stage parses arguments into a typed
config and calls one library function; nothing heavy is imported until a command runs, so
`vqgan-lc --help` answers at once.

A new stage adds a module here with `register(subparsers)` and lists it in `STAGES`.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from . import classify, codebook, convert, demo, generate, plot, study, tokenizer
from .common import OneLineParser

STAGES = (tokenizer, codebook, generate, convert, classify, study, plot, demo)

# Errors that end a command with one line on stderr and exit status 2 (no traceback).
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, OSError)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(prog="vqgan-lc", description="VQGAN-LC image tokenizers with huge frozen "
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
    except Exception as err:
        if args.verbose or not _is_user_error(err):
            raise
        _close_progress_bars()
        print(f"vqgan-lc {args.command}: error: {_one_line(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a newline first: the message must not land on a progress bar's line
        print(f"\nvqgan-lc {args.command}: interrupted; completed checkpoints and outputs are kept", file=sys.stderr)
        return 130


def _is_user_error(err: Exception) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    # safetensors' error (a full disk while writing, a damaged file) derives from Exception
    # alone; looked up only when one occurs, so that the CLI never imports it up front
    safetensors = sys.modules.get("safetensors")
    return safetensors is not None and isinstance(err, getattr(safetensors, "SafetensorError", ()))


def _close_progress_bars() -> None:
    """End the bars an error left open, so that the error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _target(filename: str) -> str:
    """The file a write was for: atomic writes go through a hidden `.NAME.XXXXXXXX.tmp` sibling."""
    folder, name = os.path.split(filename)
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return os.path.join(folder, name[1:-4].rsplit(".", 1)[0])
    return filename


def _one_line(err: Exception, args) -> str:
    """The error as one line; a write the file system refused says where, and what to do."""
    text = " ".join(str(err).split())
    code = err.errno if isinstance(err, OSError) else errno.ENOSPC if "No space left on device" in text else None
    if code in WRITE_FAILURES:
        # safetensors reports the OS error inside its own message, with no file name
        filename = err.filename if isinstance(err, OSError) and isinstance(err.filename, str) else None
        where = (_target(filename) if filename else None) or getattr(args, "out", None) or getattr(args, "resume", None)
        cause, fix = WRITE_FAILURES[code]
        return f"{cause}{f' writing {where}' if where else ''}; {fix} (completed files are kept)"
    return text or type(err).__name__


WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on device", "free some space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another --out"),
    errno.EROFS: ("read-only file system", "choose another --out"),
}  # (EACCES is left out: a refused read says so in its own words, with the file name)
