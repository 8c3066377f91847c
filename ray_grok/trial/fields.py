"""Typed, frozen config dataclasses that check themselves: one mechanism for the trial config, grid
files and cluster profiles.

A config class derives from `Checked` and declares each field with `doc(help, default)`:
- building it from a mapping (`from_mapping`: what a YAML file gives) refuses an unknown key and
  lists the valid ones, and builds a nested config class from a nested mapping;
- building it in any way (from_mapping, the constructor, dataclasses.replace) coerces every field
  to its annotation, then applies the class's own rules (`check`), so a config built in Python is
  checked exactly as one read from a file.
Every error names the dotted key and the bad value: "task.alpha must be in (0, 1), got 1.5".
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, Union

from ..errors import ConfigError


def doc(help: str, default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
        convert: Callable[[str, Any], Any] | None = None) -> Any:
    """A field with a help text (`ray-grok config`, error listings). `convert(key, value)` replaces
    the annotation's check for a field whose values need their own parsing."""
    metadata = {"help": help, **({"convert": convert} if convert else {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def internal(default: Any) -> Any:
    """A field that is not a config key (not checked, listed or compared), e.g. the source file."""
    return dataclasses.field(default=default, compare=False, metadata={"internal": True})


class Checked:
    """Base of the config dataclasses: checked when built, buildable from a mapping."""

    SECTION: ClassVar[str] = ""  # the dotted prefix of its keys in messages ("task", "ray", "run")
    ERROR: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in _fields(type(self)):
            key, value, hint = self.key(f.name), getattr(self, f.name), hints[f.name]
            if "convert" in f.metadata:
                new = f.metadata["convert"](key, value)
            elif isinstance(hint, type) and issubclass(hint, Checked):  # a nested config class
                new = hint.from_mapping(value) if isinstance(value, Mapping) else value
                if not isinstance(new, hint):
                    raise self.ERROR(f"{key} must be a mapping of its keys, got {value!r}")
            else:
                new = coerce(key, value, hint, self.ERROR)
            if new is not value:
                object.__setattr__(self, f.name, new)
        self.check()

    def check(self) -> None:
        """The class's rules beyond the type of each field (override; use `need`)."""

    def need(self, ok: bool, name: str, allowed: str) -> None:
        """A rule on field NAME: "{key} must be {allowed}, got {value}" unless OK."""
        if not ok:
            raise self.ERROR(f"{self.key(name)} must be {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.SECTION}.{name}" if cls.SECTION else name

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **internal: Any) -> Any:
        """CLS from DATA's keys (defaults for the others) and the values of `internal` fields."""
        names = {f.name for f in _fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise cls.ERROR(cls.unknown_key(str(unknown[0])))
        return cls(**data, **internal)

    @classmethod
    def unknown_key(cls, name: str) -> str:
        valid = [k for k, _, _ in describe(cls)]
        return f"unknown key {cls.key(name)}{suggest(cls.key(name), valid)}; valid keys: {', '.join(valid)}"


def suggest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean task.n_id?)' when NAME is a near miss of one VALID key (same last component,
    or a close spelling), else ''."""
    valid = list(valid)
    same_last = [v for v in valid if v.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
    close = same_last if len(same_last) == 1 else difflib.get_close_matches(name, valid, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close and close[0] != name else ""


def coerce(key: str, value: Any, hint: Any, error: type[ConfigError] = ConfigError) -> Any:
    """One leaf value against its annotation: Literal, bool, int, float, str, X | None and
    tuple[str, ...]. Allows an int for a float, a whole float for an int, a YAML bool for on/off."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and "on" in choices:
            value = "on" if value else "off"
        if value not in choices:
            raise error(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:  # tuple[str, ...]: a list of strings, or one string
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise error(f"{key} must be a list of strings, got {value!r}")
        for item in items:
            _no_control_characters(key, item, error)
        return tuple(items)
    if value is None:
        raise error(f"{key} must not be null")
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        given = value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{key} must be an integer, got {value!r}")
        if not INT64_MIN <= value <= INT64_MAX:  # every value is a column of the Parquet tables
            raise error(f"{key} must be an integer that fits in 64 bits, got {_short(given)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{key} must be a number, got {value!r}")
        given = value
        try:
            value = float(value)
        except OverflowError:  # an int beyond any float
            value = math.inf
        if not math.isfinite(value):  # nan passes every comparison rule; inf runs forever
            raise error(f"{key} must be a finite number, got {_short(given)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise error(f"{key} must be a string, got {value!r}")
        _no_control_characters(key, value, error)
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {key}")  # a bug in a config class, not user input


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# C0 and C1 control characters, DEL: a newline in a value that reaches an sbatch script or a shell
# line would start a line of its own (`partition: "gpu\n#SBATCH --time=..."`)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _short(value: Any) -> str:
    """repr of VALUE, a huge integer shortened to its size ('an integer of 301 digits')."""
    try:
        text = repr(value)
    except ValueError:  # Python refuses to print an int of more than 4300 digits
        return "an integer of more than 4300 digits"
    return text if len(text) <= 40 or not isinstance(value, int) else f"an integer of {len(text)} digits"


def _no_control_characters(key: str, value: str, error: type[ConfigError]) -> None:
    if CONTROL.search(value):
        raise error(f"{key} must be text without control characters (newlines, tabs, escapes), got {value!r}")


@functools.cache
def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every key of CLS, nested config classes expanded in place."""
    rows: list[tuple[str, Any, str]] = []
    hints = _hints(cls)
    for f in _fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, Checked):
            rows += describe(hint)
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            rows.append((cls.key(f.name), default, f.metadata.get("help", "")))
    return rows


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if not f.metadata.get("internal"))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # cached: resolving annotations costs more than building a config (a grid builds thousands)
    return typing.get_type_hints(cls)
