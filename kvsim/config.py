"""Experiment configuration: one tree of frozen dataclasses per command, written three ways.

Each leaf field is one flag (`engine.kv_dtype` -> `--kv-dtype`) and one key of a TOML or YAML
file given with `--config FILE`, either inside its section (`[engine] kv_dtype = "int8"`) or at
the top level by its own name (`kv_dtype = "int8"`; names are unique within a command). Values
are layered: dataclass defaults < the command's own defaults < the file < flags. Fields sharing
a `group` are one choice (e.g. how the KV cache is sized): the highest layer that sets any of
them decides the whole group. The same converter reads flags and files, so a bad value gets the
same one-line error either way; unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError

_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


_META_DEFAULTS = {"help": "", "flag": None, "positional": False, "choices": None, "group": None, "metavar": None,
                  "const": None}


def opt(default: Any, help: str, *, flag: str | None = None, positional: bool = False,
        choices: tuple | None = None, group: str | None = None, metavar: str | None = None,
        const: Any = None) -> Any:
    """A config field: its default, help text and how it appears on the command line."""
    meta = {"help": help, "flag": flag, "positional": positional, "choices": choices, "group": group,
            "metavar": metavar, "const": const}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Leaf:
    path: str  # "engine.kv_dtype"
    name: str  # "kv_dtype"
    base: type  # int, float, str or bool
    optional: bool  # None allowed
    is_tuple: bool  # a list of `base`
    default: Any
    meta: dict

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.name.replace("_", "-")


def _kind(tp) -> tuple[type, bool, bool]:
    """(base scalar type, optional, is_tuple) of an annotation like `tuple[int, ...] | None`."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(typing.get_args(tp)), args[0]
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0], optional, True
    return tp, optional, False


def leaves(cls, prefix: str = "") -> list[Leaf]:
    """Every leaf field of a config tree, depth first."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += leaves(tp, f"{prefix}{f.name}.")
            continue
        base, optional, is_tuple = _kind(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = {**_META_DEFAULTS, **f.metadata}  # plain dataclass fields work too (no flag details)
        out.append(Leaf(prefix + f.name, f.name, base, optional, is_tuple, default, meta))
    return out


def sections(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])]


# ---- values ---------------------------------------------------------------------------------------
def _scalar(base: type, raw: Any, where: str) -> Any:
    bad = ConfigError(f"{where}: expected {_SCALARS[base]}, got {raw!r}")
    if base is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "1", "0"):
            return raw.lower() in ("true", "yes", "1")
        raise bad
    if base is str:
        if isinstance(raw, str):
            return raw
        raise bad
    if isinstance(raw, bool):
        raise bad
    try:
        value = base(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise bad from None
    if base is int and isinstance(value, float):
        if not value.is_integer():
            raise bad
        value = int(value)
    if not isinstance(value, (int, float)):
        raise bad
    return base(value)


def _expand(values: list, where: str) -> list:
    """`1,2,4,...,64` -> 1,2,4,8,16,32,64 (geometric when the first two give an integer ratio,
    else arithmetic: `0,10,...,50`)."""
    while "..." in values:
        i = values.index("...")
        if i < 2 or i + 1 >= len(values) or "..." in values[i + 1:i + 2]:
            raise ConfigError(f"{where}: '...' needs two values before it and one after (e.g. 1,2,4,...,64)")
        a, b, end = values[i - 2], values[i - 1], values[i + 1]
        ratio = b / a if a else 0
        geometric = a > 0 and ratio > 1 and float(ratio).is_integer()
        if not geometric and b <= a:
            raise ConfigError(f"{where}: '...' needs an increasing start, got {a}, {b}")
        filled, x = [], b
        while True:
            x = x * ratio if geometric else x + (b - a)
            if x >= end:
                break
            filled.append(type(b)(x))
        values = values[:i] + filled + values[i + 1:]
    return values


def convert(leaf: Leaf, raw: Any, where: str) -> Any:
    """A raw value (flag string, file value, or a typed default) -> the leaf's type, checked."""
    if raw is None or (leaf.optional and isinstance(raw, str) and raw.lower() in ("none", "null")):
        if leaf.optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if leaf.is_tuple:
        items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
        if leaf.default == () and isinstance(items, (list, tuple)) and not items:
            return ()
        if not isinstance(items, (list, tuple)) or not items or any(i == "" for i in items):
            raise ConfigError(f"{where}: expected a comma-separated list of {_SCALARS[leaf.base]}s, got {raw!r}")
        numbers = [x if x == "..." else _scalar(leaf.base, x, where) for x in items]
        value = tuple(_expand(numbers, where) if leaf.base is not str else numbers)
    else:
        value = _scalar(leaf.base, raw, where)
    choices = leaf.meta.get("choices")
    if choices:
        for v in value if leaf.is_tuple else (value,):
            if v not in choices:
                raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(str, choices))}")
    return value
