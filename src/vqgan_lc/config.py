"""Typed configs: dataclasses that serialise, parse `key=value` overrides and validate one way.

Every config in the package (quantizer, tokenizer, losses, generators, training) derives from
`Config`. The rule is: build (preset or file) -> apply overrides -> `validate()` once, which
walks every nested config and calls its `check()`. Nothing downstream re-checks.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
import warnings
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


def renamed(new: str, old: str) -> property:
    """A read/write property `old` that forwards to `new` with a DeprecationWarning: how an
    attribute keeps working for users after its rename (say, `num_codes` -> `codebook_size`)."""

    def warn() -> None:
        warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)

    def get(self):
        warn()
        return getattr(self, new)

    def set(self, value) -> None:
        warn()
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated name of `{new}`.")


class _RenamedKeywords(type):
    """Lets a config be built with a renamed field's former keyword (`Config.renamed_fields`)."""

    def __call__(cls, *args, **kwargs):
        if cls.renamed_fields and kwargs.keys() & cls.renamed_fields.keys():
            kwargs = {cls._current_name(k): v for k, v in kwargs.items()}
        return super().__call__(*args, **kwargs)


class Config(metaclass=_RenamedKeywords):
    """Mixin for dataclass configs; subclasses add `check()` for their own fields.

    `renamed_fields` maps a field's former name to its name now: a saved config (from_dict), a
    keyword, an override and attribute access under the old name keep working, with a
    DeprecationWarning."""

    renamed_fields: ClassVar[dict[str, str]] = {}

    def __getattr__(self, name: str) -> Any:  # only called when the attribute is not found
        new = type(self).renamed_fields.get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return renamed(new, name).fget(self)

    def __setattr__(self, name: str, value: Any) -> None:
        new = type(self).renamed_fields.get(name)
        if new is not None:
            renamed(new, name).fset(self, value)
            return
        super().__setattr__(name, value)

    @classmethod
    def _current_name(cls, name: str) -> str:
        new = cls.renamed_fields.get(name)
        if new is not None:
            warnings.warn(f"{cls.__name__}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
        return new or name

    def check(self) -> None:
        """Raise ValueError (one line, naming the field) for a bad value of this config's own fields."""

    def validate(self: C) -> C:
        """Refuse NaN and infinity in every number, then `check()` this config and every nested
        one; returns self. The first test is done here once for every field of every config, so
        that no `check()` has to remember that `nan <= 0` and `nan > 1` are both false."""
        for key, value in self._numbers():
            if not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value}; give a value such as {key}=0.5")
        self._check_tree()
        return self

    def _check_tree(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value._check_tree()
        self.check()

    def _numbers(self, prefix: str = ""):
        """(dotted key, value) of every float held by this config and its nested ones (tuple items too)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            key = prefix + f.name
            if isinstance(value, Config):
                yield from value._numbers(key + ".")
            elif isinstance(value, float):
                yield key, value
            elif isinstance(value, (tuple, list)):
                yield from ((key, item) for item in value if isinstance(item, float))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from `to_dict()` output (nested configs, tuples restored); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        data = {cls._current_name(k): v for k, v in data.items()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        kwargs = {name: _from_json(hints[name], value) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"{cls.__name__}: {err}") from None

    @classmethod
    def read_saved(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A saved `to_dict()` read through this class, so that a field added since it was written
        takes its default (how that run was made); one this class cannot read (written by another
        version or another family) comes back as it is."""
        try:
            return cls.from_dict(saved).to_dict()
        except ValueError:
            return saved

    def override(self: C, items: list[str] | tuple[str, ...]) -> C:
        """Apply `key=value` strings; dotted keys reach nested configs (`loss.disc_start=1000`)."""
        for item in items:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form key=value")
            key, text = item.split("=", 1)
            *sections, name = key.split(".")
            target: Any = self
            for section in sections:
                target = getattr(target, section, None)
                if not isinstance(target, Config):
                    raise ValueError(f"override {key!r}: {section!r} is not a section")
            name = type(target)._current_name(name)
            hints = typing.get_type_hints(type(target))
            fields = {f.name for f in dataclasses.fields(target)}  # type: ignore[arg-type]
            if name not in fields or name.startswith("_"):
                known = ", ".join(sorted(k for k in fields if not k.startswith("_")))
                raise ValueError(f"override {key!r}: unknown field {name!r} (known: {known})")
            try:
                setattr(target, name, parse_value(text, hints[name]))
            except (ValueError, TypeError) as err:
                raise ValueError(f"override {key!r}: {err}") from None
        return self

    @classmethod
    def describe_fields(cls, prefix: str = "") -> list[tuple[str, str, Any]]:
        """(dotted key, type, default) of every field, nested configs flattened: for `--help` listings."""
        return _describe(cls(), prefix)  # type: ignore[call-arg]


def _describe(instance: Config, prefix: str) -> list[tuple[str, str, Any]]:
    # walks the instance, not the nested classes: a nested config's default is the value its
    # parent gives it (the study's autoencoder is the tiny preset's, not AutoencoderConfig())
    rows = []
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        if f.name.startswith("_"):
            continue
        value = getattr(instance, f.name)
        if isinstance(value, Config):
            rows += _describe(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, _type_name(hints[f.name]), value))
    return rows


def config_differences(old: Config | dict, new: Config | dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys (`model.quantizer.codebook_size`) whose values differ between two configs
    or their saved dicts, sorted; tuples equal the lists JSON gives back. A key in `ignore`, or
    under one (`"train"` covers `train.lr`), is left out."""
    def as_data(config):
        return json.loads(json.dumps(config.to_dict() if isinstance(config, Config) else config, default=str))

    def walk(a: dict, b: dict, prefix: str) -> list[str]:
        found = []
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                found += walk(x, y, f"{prefix}{key}.")
            elif x != y:
                found.append(prefix + key)
        return found

    def ignored(key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in ignore)

    return [key for key in walk(as_data(old), as_data(new), "") if not ignored(key)]


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _from_json(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if isinstance(kind, type) and issubclass(kind, Config):
        return kind.from_dict(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _from_json(args[0], value)
    return value


def parse_value(text: str, kind: Any) -> Any:
    """Parse one override value for a field annotated `kind` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = type(None) in typing.get_args(kind)
    if optional and text.lower() in ("none", "null"):
        return None
    if origin is tuple:
        elem = typing.get_args(kind)[0]
        items = tuple(parse_value(x, elem) for x in text.split(",") if x)
        fixed = typing.get_args(kind)
        if Ellipsis not in fixed and len(items) != len(fixed):
            raise ValueError(f"expected {len(fixed)} comma-separated values, got {text!r}")
        return items
    if origin is list:
        return [x for x in text.split(",") if x]
    if args and origin is not None:  # Optional[X] / X | None
        kind = args[0]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    if kind is int:
        number = float(text)
        if number != int(number):
            raise ValueError(f"expected an integer, got {text!r}")
        return int(number)
    if kind is float:
        return float(text)
    return text
