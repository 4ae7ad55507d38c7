"""Each default is written once: a flag of the real `vqgan-lc` parser whose name is a field of
the config its command builds defaults to that field's default."""
import argparse
import dataclasses
import importlib

import pytest

from vqgan_lc.cli import build_parser
from vqgan_lc.cli.common import add_config_flags, config_from_args
from vqgan_lc.config import Config

# command -> the configs it builds from its flags ("module:Class")
CONFIGS = {
    "eval": ["vqgan_lc.evaluate.evaluator:EvalConfig"],
    "codebook build": ["vqgan_lc.codebook.config:CodebookBuildConfig"],
    "cache": ["vqgan_lc.generate.cache:CacheConfig"],
    "sample": ["vqgan_lc.generate.sample:SampleConfig"],
    "eval-gen": ["vqgan_lc.evaluate.generation:GenEvalConfig", "vqgan_lc.evaluate.generation:StatsConfig"],
    "study": ["vqgan_lc.study:StudyConfig"],
    "classify": ["vqgan_lc.classify.model:TokenClassifierConfig"],
    "demo": ["vqgan_lc.demo:DemoConfig", "vqgan_lc.generate.demo:GenerationDemoConfig"],
}
# Commands whose flags fill no config field by name: `--set` overrides and recipe/preset names
# (train, train-gen, classify's `--set`), file arguments (convert), or a group of subcommands.
NO_CONFIG = {"train", "reconstruct", "encode", "decode", "export", "presets", "codebook", "codebook info", "convert",
             "train-gen", "plot", "info", "app", ""}
# Flags whose absence keeps the config's value: the command sets the field only when the flag is
# given (study: `if getattr(args, name) is not None`), so None is "not given", not a default.
ONLY_WHEN_GIVEN = {("study", "sizes"), ("study", "quantizers"), ("study", "steps"), ("study", "seeds"),
                   ("study", "ablation"), ("study", "classify")}


def _commands(parser, path=()):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _config_class(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


COMMANDS = dict(_commands(build_parser()))


def test_every_command_is_classified():
    assert set(COMMANDS) == set(CONFIGS) | NO_CONFIG, "add the new command to CONFIGS (or NO_CONFIG)"


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_flag_defaults_equal_the_config_defaults(command):
    checked, differ = 0, []
    for config_class in map(_config_class, CONFIGS[command]):
        assert issubclass(config_class, Config), f"{config_class.__name__} must derive from Config"
        defaults = config_class()
        fields = {f.name for f in dataclasses.fields(config_class)}
        for action in COMMANDS[command]._actions:
            if action.dest not in fields or action.required or not action.option_strings:
                continue  # positional and required flags have no default to compare
            if (command, action.dest) in ONLY_WHEN_GIVEN:
                assert action.default is None
                continue
            if isinstance(action, argparse._StoreConstAction) and action.default is None:
                continue  # a switch to one value (`--no-pool`): the field's default is another flag's
            checked += 1
            if action.default != getattr(defaults, action.dest):
                differ.append(f"{'/'.join(action.option_strings)} defaults to {action.default!r}, "
                              f"{config_class.__name__}.{action.dest} to {getattr(defaults, action.dest)!r}")
    assert differ == []
    assert checked > 0


def test_flags_generated_from_a_config_carry_its_types_defaults_and_comments():
    @dataclasses.dataclass
    class Toy(Config):
        name: str = ""                 # what the run is called
        steps: int = 10                # how long it trains
        rate: float | None = None      # None: the schedule's own
        sizes: tuple[int, ...] = (1, 2)
        verbose: bool = True

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Toy, positional=("name",))
    assert "how long it trains (default 10)" in parser.format_help()
    args = parser.parse_args(["x"])
    assert config_from_args(Toy, args) == Toy(name="x")
    args = parser.parse_args(["x", "--steps", "3", "--rate", "none", "--sizes", "4,5", "--no-verbose"])
    assert config_from_args(Toy, args, steps=7) == Toy(name="x", steps=7, rate=None, sizes=(4, 5), verbose=False)
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--steps", "1.5"])
