"""Plain dicts (safe-loaded YAML) into checked dataclasses, and back: every error names the dotted
key and what was expected."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError


def bounded(default: Any, **limits: Any) -> Any:
    """A dataclass field whose value ``from_dict`` checks against ``limits``: ``min``/``max``
    (inclusive), ``above`` (exclusive lower bound), ``choices``, ``length`` (lists); for a
    list the bounds apply to each item. Floats must also be finite."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=limits)
    return field(default=default, metadata=limits)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except InputError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key}: expected a list of {_type_name(item_type)}, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
        return value
    raise InputError(f"{key}: expected {_type_name(annotation)}, got {value!r}")


def read_yaml(path, what: str) -> Any:
    """Safe-load the YAML file ``path``; ``InputError`` naming the file and ``what`` it should be otherwise."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def from_dict(cls: type, data: dict, section: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types.

    ``section`` is the dotted path of ``data`` inside the whole config, for messages."""
    if not isinstance(data, dict):
        raise InputError(f"{section or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{section}.{key}" if section else key
        if key not in hints:
            raise InputError(f"unknown key {path!r}; allowed keys here: {', '.join(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value, path)
        else:
            kwargs[key] = _coerce(value, annotation, path)
    config = check_fields(cls(**kwargs), section)
    if hasattr(config, "check"):
        config.check(section or cls.__name__)
    return config


def check_fields(config: Any, section: str = "") -> Any:
    """Check every ``bounded`` field of dataclass ``config`` (``section``: its dotted path,
    for messages); returns ``config``."""
    for item in dataclasses.fields(config):
        _check_limits(getattr(config, item.name), item.metadata, f"{section}.{item.name}" if section else item.name)
    return config


def _check_limits(value: Any, limits: dict, key: str) -> None:
    """``InputError`` naming ``key`` when ``value`` breaks a ``bounded`` field's limits."""
    if value is None or not limits:
        return
    if isinstance(value, list):
        if "length" in limits and len(value) != limits["length"]:
            raise InputError(f"{key}={value!r}: expected a list of {limits['length']} values")
        if not value:
            raise InputError(f"{key}=[]; expected a non-empty list")
        for index, item in enumerate(value):
            _check_limits(item, {k: v for k, v in limits.items() if k != "length"}, f"{key}[{index}]")
        return
    if "choices" in limits and value not in limits["choices"]:
        raise InputError(f"{key}={value!r}; expected one of: {', '.join(map(str, limits['choices']))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{key}={value!r}; expected a finite number")
    for name, broken, text in (("min", lambda b: value < b, ">="), ("max", lambda b: value > b, "<="),
                               ("above", lambda b: value <= b, ">")):
        if name in limits and broken(limits[name]):
            raise InputError(f"{key}={value!r}; expected {text} {limits[name]}")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
