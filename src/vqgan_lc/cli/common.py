"""Arguments shared by several commands, as argparse parent parsers (no heavy imports here)."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line naming the command and the fix, like every other error
    (argparse's default prints the whole usage block first); exit status 2 as before."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


class _EnableDownloads(argparse.Action):
    """`--download` sets VQGAN_LC_DOWNLOAD=1 as soon as it is parsed: every weight lookup in this
    process (and in processes it starts) then sees it, without a flag threaded through the calls."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import os

        from ..files import DOWNLOAD_ENV
        os.environ[DOWNLOAD_ENV] = "1"
        setattr(namespace, self.dest, True)


def download(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download", action=_EnableDownloads,
                   help="fetch missing pretrained weights (VGG16 + LPIPS, FID Inception, CLIP) into the usual caches, "
                        "hash-checked; same as VQGAN_LC_DOWNLOAD=1 (default: offline, local files only)")


def field_comments(config_class) -> dict[str, str]:
    """The comment after each field of a dataclass, from its source: what `--help` says of a flag."""
    import inspect
    import re

    try:
        source = inspect.getsource(config_class)
    except (OSError, TypeError):  # no source (frozen application): flags without help
        return {}
    field_line = re.compile(r"^\s+([a-z_][a-z0-9_]*)\s*:[^#]*#\s*(.+)$")
    return {m.group(1): m.group(2).strip() for m in map(field_line.match, source.splitlines()) if m}


def add_config_flags(parser: argparse.ArgumentParser, config_class, *, skip: tuple[str, ...] = (),
                     positional: tuple[str, ...] = (), required: tuple[str, ...] = (),
                     aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per field of the `Config` dataclass `config_class`: `--batch-size` for
    `batch_size`, parsed as the field's type, defaulting to the field's default, with the field's
    comment as its help. A bool field gets `--name / --no-name`. `positional` fields become
    arguments, `required` ones mandatory flags; `skip` leaves fields to the caller (say, a flag
    group of its own); `aliases` adds option strings (`{"codebook_size": ("--size",)}`). The
    defaults are then written once, in the dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_class)
    defaults = config_class()
    comments = field_comments(config_class)
    for f in dataclasses.fields(config_class):
        if f.name in skip or f.name.startswith("_"):
            continue
        kind, default = hints[f.name], getattr(defaults, f.name)
        text = comments.get(f.name, "").replace("%", "%%")
        if f.name in positional:
            parser.add_argument(f.name, type=_config_value(kind), help=text or None)
            continue
        flags = ("--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ()))
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=text or None)
        elif f.name in required:
            parser.add_argument(*flags, type=_config_value(kind), required=True, help=text or None)
        else:
            shown = "" if default is None or "default" in text else f"default {default!r}".replace("%", "%%")
            parser.add_argument(*flags, type=_config_value(kind), default=default,
                                help=" ".join(filter(None, (text, f"({shown})" if text and shown else shown))) or None)


def _config_value(kind):
    """An argparse type parsing a field annotated `kind` the way `--set key=value` does."""
    from ..config import parse_value

    def parse(text: str):
        try:
            return parse_value(text, kind)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its error
    return parse


def config_from_args(config_class, args: argparse.Namespace, **given):
    """`config_class` from the parsed flags whose names are its fields, plus `given` values."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return config_class(**{**values, **given})


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def comma_names(choices, what: str = ""):
    """An argparse type for a comma-separated, non-empty subset of `choices` ("lc,vq"), a tuple or a
    function returning one (read at parse time: a list that lives next to torch code); `what`
    names the list in the error ("choose generators from gpt,dit,...")."""
    label = f"{what} " if what else ""

    def parse(text: str) -> tuple[str, ...]:
        options = choices() if callable(choices) else choices
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names or any(n not in options for n in names):
            raise argparse.ArgumentTypeError(f"choose {label}from {','.join(options)}, got {text!r}")
        return names
    return parse


def writable_out(path: str, what: str = "output folder") -> None:
    """Fail before any work when the output folder cannot be written."""
    from ..files import check_writable_dir
    check_writable_dir(path, what)


def print_config_keys(config_class, title: str) -> str:
    rows = config_class.describe_fields()
    width = max(len(k) for k, _, _ in rows)
    lines = [f"  {k:<{width}}  {t:<22} default {v!r}" for k, t, v in rows]
    return f"{title}\n" + "\n".join(lines)


def overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the training run --out already holds (its "
                   "checkpoint, logs and exported model are deleted first); without it such an --out is refused")


def refuse_existing_run(out: str, overwrite: bool, *exports: str) -> None:
    """A fresh run into a folder that holds one (finished or not) is refused unless `overwrite`,
    which deletes that run's files first (never anything else in the folder)."""
    from ..files import DirectoryLock
    from ..train.loop import clear_run, holds_run

    if not holds_run(out):
        return
    with DirectoryLock(out):  # a run another process is training says so first, and is never cleared
        if not overwrite:
            raise ValueError(f"{out} already holds a training run; continue it with --resume {out}, replace it with "
                             "--overwrite, or choose another --out")
        clear_run(out, *exports)


def is_generator_run(folder: str) -> bool:
    """A train-gen run folder (its train_config.json names a generator preset)."""
    import json
    import os

    try:
        with open(os.path.join(folder, "train_config.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "generator" in saved


def refuse_other_family(run: str, generator: bool) -> None:
    """`train --resume` of a generator run (or the reverse): one line naming the right command,
    instead of the other config class's list of unknown fields."""
    import json
    import os

    try:
        with open(os.path.join(run, "train_config.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # missing or unreadable: the run reader says so in its own words
    if isinstance(saved, dict) and ("generator" in saved) != generator:
        kind, command = ("tokenizer", "train") if generator else ("generator", "train-gen")
        raise ValueError(f"{run} is a {kind} run; continue it with `vqgan-lc {command} --resume {run}`")


def training_summary(result, name: str, config) -> str:
    """The last line of `train` / `train-gen`: what this call trained, or that it trained nothing
    (a resumed run already at its last step), never "saved" when nothing was written."""
    ran = len(result.history)  # steps this call ran, skipped ones included
    if ran == 0:
        limit = f"max_steps={config.max_steps}" if config.max_steps else f"epochs={config.epochs}"
        return (f"nothing trained: the run in {result.out_dir} is already at step {result.step}, its last "
                f"({limit}); {result.out_dir / name} is unchanged; resume with --set max_steps=N "
                f"(N > {result.step}) to train further")
    skipped = getattr(result, "skipped_steps", 0)
    note = f", {skipped} of them skipped (no readable image)" if skipped else ""
    steps = "1 step" if ran == 1 else f"{ran} steps"
    return (f"trained to step {result.step} ({steps} in this run{note}); {name} saved in {result.out_dir / name}; "
            f"{result.weights_line()}")


def resumed_config(saved, run: str, overrides: list[str], requested=None):
    """The config a `--resume RUN` continues with: the run's saved one (or `requested`), plus
    overrides, in RUN. Which fields may differ from the saved run is the config class's rule
    (`TrainConfig.resume_fields`), which the training loop enforces for every caller."""
    import copy

    config = copy.deepcopy(requested if requested is not None else saved).override(overrides)
    config.out_dir = str(run)
    return config.validate()


def parser_listing_keys(config_class: str, title: str) -> type[argparse.ArgumentParser]:
    """A parser class whose `--help` ends with every `--set` key of `config_class` ("module:Name",
    imported only when help is asked for, so building the parser stays cheap)."""

    class KeysHelpParser(OneLineParser):
        def format_help(self) -> str:
            import importlib

            module, name = config_class.split(":")
            keys = print_config_keys(getattr(importlib.import_module(module), name), title)
            return super().format_help() + "\n" + keys + "\n"

    return KeysHelpParser
