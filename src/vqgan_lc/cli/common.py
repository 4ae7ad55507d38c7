"""Arguments shared by several commands, as argparse parent parsers (no heavy imports here)."""
from __future__ import annotations

import argparse


def add_parser(sub, name: str, parser_class: type[argparse.ArgumentParser], **kwargs) -> argparse.ArgumentParser:
    """`sub.add_parser` with a parser subclass (argparse takes the class only per subparsers action)."""
    default, sub._parser_class = sub._parser_class, parser_class
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = default


def parent(*adders) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(p)
    return p


def checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a tokenizer folder (config.json + model.safetensors)")


def out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; inputs are never overwritten)")


def image_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=positive_int, help="square crop size (default: the tokenizer's resolution)")


def device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. max_steps=20 lr=1e-4 loss.disc_start=1000")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def writable_out(path: str, what: str = "output folder") -> None:
    """Fail before any work when the output folder cannot be written."""
    from ..files import check_writable_dir
    check_writable_dir(path, what)


def print_config_keys(config_class, title: str) -> str:
    rows = config_class.describe_fields()
    width = max(len(k) for k, _, _ in rows)
    lines = [f"  {k:<{width}}  {t:<22} default {v!r}" for k, t, v in rows]
    return f"{title}\n" + "\n".join(lines)


# Fields a resumed run may change without changing what it computes.
RESUME_SAFE_FIELDS = ("max_steps", "epochs", "save_every", "log_every", "image_every", "usage_every", "num_workers",
                      "device", "out_dir")


def resumed_config(saved, run: str, overrides: list[str], requested=None):
    """The config a `--resume RUN` continues with: the run's saved one (or `requested`, which must
    equal it), plus overrides of the safe fields only; a changed field is named in one line."""
    import copy

    config = copy.deepcopy(requested if requested is not None else saved).override(overrides)
    config.out_dir = str(run)
    new, old = config.to_dict(), saved.to_dict()
    changed = [k for k in new if new[k] != old.get(k) and k not in RESUME_SAFE_FIELDS]
    if changed:
        raise ValueError(f"--resume {run}: {', '.join(changed)} differ(s) from the saved run; a resumed run keeps "
                         f"its configuration (only {', '.join(RESUME_SAFE_FIELDS[:-1])} may change)")
    return config.validate()
