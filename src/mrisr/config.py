"""Strict YAML configuration: dataclass schemas, unknown keys rejected with their full path.

Every setting of a command lives in a YAML file; :func:`load_config` maps it onto a dataclass
schema (nested dataclasses, lists, optional values) and reports the first problem as
``<file>: unknown key 'evaluation.scalez' (known: ...)`` or ``<file>: key 'x' must be ...``.
``${VAR}`` and ``${VAR:-default}`` in strings expand from the environment; ``MRISR_DATA``
defaults to ``../shared/data``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import yaml

from mrisr.errors import ConfigError

T = TypeVar("T")
DEFAULT_DATA_ROOT = "../shared/data"
#: The largest scale factor (per axis) that any option or setting accepts: beyond it no image
#: keeps a voxel or fits in memory, and arithmetic on absurd values (1e308) overflows.
MAX_SCALE = 1000.0


def is_scale(value, low: float = 1.0) -> bool:
    """Whether ``value`` is a scale factor a setting accepts: a finite number from ``low``
    (1: a "low-resolution" image is never upsampled) to :data:`MAX_SCALE`."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value) and low <= value <= MAX_SCALE
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def data_root() -> Path:
    """Folder of the team's real datasets: ``$MRISR_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("MRISR_DATA", DEFAULT_DATA_ROOT))


def expand_vars(text: str) -> str:
    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name == "MRISR_DATA":
            return os.environ.get(name, default or DEFAULT_DATA_ROOT)
        value = os.environ.get(name, default)
        if value is None:
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")
        return value
    return _VAR.sub(repl, text)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp) or (tp if tp in (list, dict) else None)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: key '{where}' has an invalid value")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{where}' must be a mapping")
        return from_dict(tp, value, source=source, prefix=where)
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{where}' must be a list")
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{where}' must be a mapping")
        return dict(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: key '{where}' must be one of "
                              f"{', '.join(map(str, args))}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{where}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: key '{where}' must be a string, got {value!r}")
        return expand_vars(str(value))
    raise ConfigError(f"{source}: key '{where}' has unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict, source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{where}' "
                              f"(known: {', '.join(sorted(fields))})")
        kwargs[key] = _convert(value, hints[key], where, source)
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        where = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"{source}: missing required key '{where}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(source)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-serialisable) view of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Read a YAML mapping. A top-level ``extends: other.yaml`` (relative to this file) loads
    that file first and merges this one over it, so variants state only what differs."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, expected a YAML config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML config (binary content, not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None or data == {}:
        # Not the defaults: an empty file is a mistake (not saved, the wrong file), which a
        # whole default evaluation or training run would hide.
        raise ConfigError(f"{p}: config is empty (no settings)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of settings")
    parent = data.pop("extends", None)
    if parent is not None:
        base_path = (p.parent / str(parent)).resolve()
        if base_path in _seen:
            raise ConfigError(f"{p}: 'extends' forms a cycle through {base_path}")
        data = merge(load_yaml(base_path, _seen + (base_path,)), data)
    return data


def load_config(path: str | os.PathLike, cls: type[T],
                overrides: Optional[dict] = None) -> T:
    """Load a YAML file into schema ``cls``; ``overrides`` (nested mapping) replace values."""
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return from_dict(cls, data, source=str(path))


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) -> ``{"a": {"b": {"c": value}}}``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value
