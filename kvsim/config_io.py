"""Reading a config three ways: flags (one per leaf of the command's tree), a TOML / YAML / JSON
file (`--config`), and the command's own defaults; and writing the resolved config back as TOML
that `--config` reads to the same values. See kvsim.config for the layering rules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from kvsim.config import convert, leaves, sections


# ---- command line ---------------------------------------------------------------------------------
def show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def add_flags(parser: argparse.ArgumentParser, cls, defaults: dict[str, Any] | None = None) -> None:
    """One argument per leaf, in a help group per section; omitted flags stay out of the
    namespace (so they never override the file)."""
    defaults = defaults or {}
    seen: dict[str, str] = {}
    groups: dict[str, Any] = {}
    for leaf in leaves(cls):
        assert leaf.name not in seen, f"{cls.__name__}: {leaf.path} and {seen[leaf.name]} share a name"
        seen[leaf.name] = leaf.path
        section = leaf.path.rpartition(".")[0]
        if section and section not in groups:
            groups[section] = parser.add_argument_group(f"{section} (the [{section}] table of --config)")
        target = groups.get(section, parser)
        default = defaults.get(leaf.path, leaf.default)
        meta = leaf.meta
        text = f"{meta['help']} (default: {show(default)})".replace("%", "%%")
        choices = meta["choices"]
        metavar = meta["metavar"] or ("{" + ",".join(map(str, choices)) + "}" if choices else leaf.name.upper())
        if meta["positional"]:
            target.add_argument(leaf.path, nargs="*" if leaf.is_tuple else "?", default=argparse.SUPPRESS,
                                help=text, metavar=metavar)
        elif leaf.base is bool and not leaf.is_tuple:
            target.add_argument(leaf.flag, dest=leaf.path, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            extra = {"nargs": "?", "const": meta["const"]} if meta["const"] is not None else {}
            target.add_argument(leaf.flag, dest=leaf.path, default=argparse.SUPPRESS, help=text,
                                metavar=metavar, **extra)


# ---- files ----------------------------------------------------------------------------------------
def read_file(path: str) -> dict:
    p = Path(path)
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"--config {path}: expected a .toml, .yaml, .yml or .json file")
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # tomllib, yaml and json each have their own error type
        raise ConfigError(f"--config {path}: not valid {p.suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of keys at the top, got {type(data).__name__}")
    return data


def flatten_file(cls, data: dict, path: str) -> dict[str, Any]:
    """{section: {key: v}} or {key: v} -> {"section.key": v}; unknown keys are errors."""
    by_name = {leaf.name: leaf.path for leaf in leaves(cls)}
    secs = sections(cls)
    out = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k in secs and isinstance(value, dict):
            valid = {lf.name for lf in leaves(cls) if lf.path.startswith(k + ".")}
            for sub, v in value.items():
                s = str(sub).replace("-", "_")
                if s not in valid:
                    raise ConfigError(f"{path}: unknown key {k}.{sub}; valid keys in [{k}]: {', '.join(sorted(valid))}")
                out[f"{k}.{s}"] = v
        elif k in by_name:
            out[by_name[k]] = value
        else:
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys: {', '.join(sorted(by_name))} "
                              f"(or inside the sections {', '.join(secs)})")
    return out


# ---- resolving ------------------------------------------------------------------------------------
def resolve(cls, namespace: argparse.Namespace, defaults: dict[str, Any] | None = None,
            config_path: str | None = None):
    """The command's config: defaults < command defaults < --config file < flags."""
    all_leaves = {leaf.path: leaf for leaf in leaves(cls)}
    file_values = flatten_file(cls, read_file(config_path), config_path) if config_path else {}
    flags = {k: v for k, v in vars(namespace).items() if k in all_leaves}
    layers = [({**defaults} if defaults else {}, "default"), (file_values, config_path), (flags, "flag")]
    groups = {leaf.meta["group"] for leaf in all_leaves.values() if leaf.meta["group"]}
    for group in groups:
        members = {p for p, lf in all_leaves.items() if lf.meta["group"] == group}
        top = max((i for i, (values, _) in enumerate(layers) if members & set(values)), default=None)
        for i, (values, _) in enumerate(layers):
            if top is not None and i < top:
                for p in members:
                    values.pop(p, None)
    values: dict[str, Any] = {}
    for layer, source in layers:
        for p, raw in layer.items():
            leaf = all_leaves[p]
            flag = (leaf.meta["metavar"] or leaf.name) if leaf.meta["positional"] else leaf.flag
            where = flag if source == "flag" else f"{source}: {p}" if source != "default" else p
            values[p] = convert(leaf, raw, where)
    try:
        return build(cls, values)
    except ConfigError as e:  # a check across fields: name the file when the value came from it
        from_file = [p for p in file_values if p not in flags and p in str(e)]
        if from_file:
            raise ConfigError(f"{config_path}: {e}") from None
        raise


def build(cls, values: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build(hints[f.name], values, f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_toml(config, defaults: dict[str, Any] | None = None) -> str:
    """The resolved config as TOML that `--config` reads back to the same config."""
    lines: list[str] = []
    by_section: dict[str, list[str]] = {}
    for leaf in leaves(type(config)):
        value = config
        for part in leaf.path.split("."):
            value = getattr(value, part)
        effective_default = (defaults or {}).get(leaf.path, leaf.default)
        if value is None and (effective_default is None or leaf.meta["group"]):
            continue  # absent = None (a group's other member, or a None default)
        section, _, name = leaf.path.rpartition(".")
        by_section.setdefault(section, []).append(f"{name} = {_toml_value(value)}")
    lines += by_section.pop("", [])
    for section, entries in by_section.items():
        lines += ["", f"[{section}]", *entries]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
