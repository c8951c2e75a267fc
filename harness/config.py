"""Run configuration: dataclasses, loading from plain dicts (safe-loaded YAML) and ``key=value`` overrides.

Every error names the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError


@dataclass
class ModelConfig:
    backbone: str = "resnet10t"
    neck: str = "mlp"
    classifier: str = "softmax"
    embed_dim: int = 256
    backbone_kwargs: dict = field(default_factory=dict)
    classifier_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """``dataset`` names a pair ``<dataset>_train`` / ``<dataset>_val`` in the catalog."""

    dataset: str = "digits_sem_seg"
    image_size: int = 48
    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 2
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.25])
    hflip_prob: float = 0.5
    color_jitter: float = 0.2


@dataclass
class TrainConfig:
    iters: int = 2000
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    warmup_iters: int = 50
    poly_power: float = 0.9
    grad_clip: float | None = None
    seed: int = 0
    threads: int = 0
    log_period: int = 20
    checkpoint_period: int = 0


@dataclass
class MeasureConfig:
    """Cost measurement of the trained model (``harness.measure``): FLOPs and parameters at
    ``image_size``; latency, throughput and peak memory for each of ``batch_sizes``
    (``warmup`` untimed then ``iters`` timed forwards). ``dtype`` float32|bfloat16|float16
    (autocast when not float32); threads are the run's ``train.threads``."""

    enabled: bool = True
    image_size: int = 512
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    warmup: int = 5
    iters: int = 20
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    device: str = "auto"
    output_dir: str = "outputs"
    tracking_uri: str | None = None
    experiment: str = "segheads"


# Settings that change where or how fast a cell runs, not what it computes.
_NOT_HASHED = {"device", "output_dir", "tracking_uri", "experiment", "data.num_workers", "train.threads",
               "train.log_period", "train.checkpoint_period"}


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
    return cls(**kwargs)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of ``config``.

    Keys inside mapping fields (``model.classifier_kwargs.decoder_layers=2``) are set
    as given; every other key must name an existing field.
    """
    data = to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value, e.g. train.lr=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise InputError(f"override {item!r}: {'.'.join(parts[: depth + 1])!r} is not a section; "
                                 f"sections here: {', '.join(k for k, v in node.items() if isinstance(v, dict))}")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(RunConfig, data)


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


def config_hash(config: RunConfig) -> str:
    """A stable 16-hex digest of everything that changes what a cell computes."""
    semantic = {k: v for k, v in flatten(to_dict(config)).items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]
