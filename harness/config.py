"""Run configuration: dataclasses, loading from plain dicts (safe-loaded YAML) and ``key=value`` overrides.

Every error names the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError


def _bounded(default: Any, **limits: Any) -> Any:
    """A dataclass field whose value ``from_dict`` checks against ``limits``: ``min``/``max``
    (inclusive), ``above`` (exclusive lower bound), ``choices``, ``length`` (lists); for a
    list the bounds apply to each item. Floats must also be finite."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=limits)
    return field(default=default, metadata=limits)


@dataclass
class ModelConfig:
    backbone: str = "resnet10t"
    neck: str = "mlp"
    classifier: str = "softmax"
    embed_dim: int = _bounded(256, min=1)
    backbone_kwargs: dict = field(default_factory=dict)
    classifier_kwargs: dict = field(default_factory=dict)
    neck_kwargs: dict = field(default_factory=dict)  # the neck's options, and ``auxiliary: true|false``
    # SyncBatchNorm across a cell's workers: auto = when it has more than one worker on CUDA.
    sync_bn: bool | str = _bounded("auto", choices=(True, False, "auto"))
    # Initialisation of the neck, auxiliary head and classifier: torch = PyTorch's defaults; mmseg =
    # MMSegmentation's (ConvModule convs Kaiming-normal fan_out, norms 1/0, final classifiers N(0, 0.01)).
    init: str = _bounded("torch", choices=("torch", "mmseg"))


@dataclass
class DataConfig:
    """``dataset`` names a pair ``<dataset>_train`` / ``<dataset>_val`` in the catalog."""

    dataset: str = "digits_sem_seg"
    image_size: int | list[int] = _bounded(48, min=16)  # the training crop: a square's side, or [h, w]
    batch_size: int = _bounded(8, min=1)
    eval_batch_size: int = _bounded(8, min=1)
    num_workers: int = _bounded(2, min=0)
    scale_range: list[float] = _bounded([0.8, 1.25], above=0, length=2)
    hflip_prob: float = _bounded(0.5, min=0, max=1)
    color_jitter: float = _bounded(0.2, min=0, max=1)

    def check(self, section: str) -> None:
        if isinstance(self.image_size, list) and len(self.image_size) != 2:
            raise InputError(f"{section}.image_size={self.image_size!r}: expected a side or [h, w]")

    @property
    def crop_size(self) -> tuple[int, int]:
        """The training crop as (h, w)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


_MULTIPLIERS = ("lr_mult", "decay_mult")  # what a train.param_groups entry may set


@dataclass
class TrainConfig:
    """``iters`` optimiser steps of ``data.batch_size`` samples (the global batch, split over the
    cell's workers and ``accumulate`` micro-batches each); ``precision`` fp32 | bf16 | fp16
    (autocast; fp16 with a gradient scaler); every ``log_period`` steps the loss terms are read
    from the device once and reported, every ``checkpoint_period`` (0: at the end only) a
    checkpoint is written, every ``eval_period`` (0: at the end only) the model is evaluated."""

    iters: int = _bounded(2000, min=1)
    optimizer: str = _bounded("adamw", choices=("adamw", "sgd"))
    lr: float = _bounded(3e-3, above=0)
    weight_decay: float = _bounded(0.01, min=0)
    momentum: float = _bounded(0.9, min=0, max=1)
    warmup_iters: int = _bounded(50, min=0)
    poly_power: float = _bounded(0.9, min=0)
    grad_clip: float | None = _bounded(None, above=0)
    seed: int = 0
    threads: int = _bounded(0, min=0)
    log_period: int = _bounded(20, min=1)
    checkpoint_period: int = _bounded(0, min=0)
    eval_period: int = _bounded(0, min=0)
    accumulate: int = _bounded(1, min=1)
    precision: str = _bounded("fp32", choices=("fp32", "bf16", "fp16"))
    # MMSegmentation's paramwise_cfg custom_keys: a substring of parameter names -> {lr_mult,
    # decay_mult}; a parameter takes the longest key it contains (1-d parameters: no decay
    # unless a key says otherwise; a multiplier a key leaves out keeps its default; "" is in every
    # name), e.g. {backbone: {lr_mult: 0.1}, norm: {decay_mult: 0}}.
    param_groups: dict = field(default_factory=dict)

    def check(self, section: str) -> None:
        for key, settings in self.param_groups.items():
            where = f"{section}.param_groups.{key}"
            if not isinstance(settings, dict) or not settings or set(settings) - set(_MULTIPLIERS):
                raise InputError(f"{where}: expected a mapping of {' and/or '.join(_MULTIPLIERS)}, got {settings!r}")
            for name, value in settings.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                    raise InputError(f"{where}.{name}={value!r}; expected a number >= 0")


@dataclass
class MeasureConfig:
    """Cost measurement of the trained model (``harness.measure``): FLOPs and parameters at
    ``image_size``; latency, throughput and peak memory for each of ``batch_sizes``
    (``warmup`` untimed then ``iters`` timed forwards). ``dtype`` float32|bfloat16|float16
    (autocast when not float32); threads are the run's ``train.threads``."""

    enabled: bool = True
    image_size: int = _bounded(512, min=1)
    batch_sizes: list[int] = _bounded([1], min=1)
    warmup: int = _bounded(5, min=0)
    iters: int = _bounded(20, min=1)
    dtype: str = _bounded("float32", choices=("float32", "bfloat16", "float16"))
    channels_last: bool = False
    compile: bool = False


@dataclass
class EvalConfig:
    """How each validation image is predicted (``harness.evaluate.predict_logits``; MMSegmentation's
    test protocols). The image is resized so its short side is ``short_side`` (``null``: native
    size), capped so its long side stays within ``max_long_side`` (MMSeg's ``Resize(scale=(2048,
    512), keep_ratio=True)`` is short_side 512, max_long_side 2048); then, for each factor of
    ``scales`` (of that size) and each of {as is, flipped} when ``flip``, predicted ``whole`` or by
    ``slide`` windows of ``crop_size`` [h, w] every ``stride`` [h, w], logits averaged where
    windows overlap. Scores come back at the image's original size (bilinear); over several
    scales x flips they are softmax probabilities averaged (MMSeg's ``SegTTAModel``).

    ``extra`` maps a name to more protocols, each these keys over this one's, evaluated at the end
    of training and logged as ``<metric>/<name>`` (``mIoU/ms_flip``)."""

    mode: str = _bounded("whole", choices=("whole", "slide"))
    short_side: int | None = _bounded(None, min=1)
    max_long_side: int | None = _bounded(None, min=1)
    crop_size: list[int] | None = _bounded(None, min=1, length=2)
    stride: list[int] | None = _bounded(None, min=1, length=2)
    scales: list[float] = _bounded([1.0], above=0)
    flip: bool = False
    extra: dict = field(default_factory=dict)

    def check(self, section: str) -> None:
        """``InputError`` naming the key when slide mode lacks its window, or an ``extra`` protocol is not one."""
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise InputError(f"{section}.mode=slide: expected {section}.crop_size and {section}.stride ([h, w] each)")
        for name, update in self.extra.items():
            if not isinstance(update, dict) or "extra" in update:
                raise InputError(f"{section}.extra.{name}: expected a mapping of {section} keys (no nested extra)")
            self.protocol(name)

    def protocol(self, name: str) -> "EvalConfig":
        """The ``extra`` protocol ``name``: its keys over this protocol's."""
        base = {k: v for k, v in to_dict(self).items() if k != "extra"}
        return from_dict(EvalConfig, {**base, **self.extra[name]}, f"eval.extra.{name}")

    def describe(self) -> str:
        """One line: the protocol as a reader of a table would name it."""
        size = "native size" if self.short_side is None else f"short side {self.short_side}" + (
            f" (long <= {self.max_long_side})" if self.max_long_side else "")
        window = "whole" if self.mode == "whole" else f"slide {self.crop_size[0]}x{self.crop_size[1]} stride {self.stride[0]}x{self.stride[1]}"
        views = "" if self.scales == [1.0] else f", scales {'/'.join(f'{s:g}' for s in self.scales)}"
        return f"{window}, {size}{views}{', flip' if self.flip else ''}"

    def describe_all(self) -> str:
        """This protocol and each ``extra`` one by name, as the dry run and a cell's log list them."""
        return "; ".join([self.describe()] + [f"{name}: {self.protocol(name).describe()}" for name in self.extra])


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"
    output_dir: str = "outputs"
    tracking_uri: str | None = None
    experiment: str = "segheads"


# Settings that change where or how fast a cell runs, not what it computes.
# Keys added after cells were logged, with the value they had implicitly: left out of the hash
# at that value, so those cells keep theirs.
_HASHED_WHEN_SET = {"model.neck_kwargs": {}, "model.sync_bn": "auto", "train.accumulate": 1, "train.precision": "fp32",
                    "model.init": "torch", "train.param_groups": {},
                    **{f"eval.{item.name}": item.default if item.default is not dataclasses.MISSING
                       else item.default_factory() for item in dataclasses.fields(EvalConfig)}}
_NOT_HASHED = {"device", "output_dir", "tracking_uri", "experiment", "data.num_workers", "train.threads",
               "train.log_period", "train.checkpoint_period", "train.eval_period"}
# How a trained cell's cost is measured (recorded with each measurement, never its identity)
# and how fast it is evaluated: changing them re-measures a FINISHED cell, never retrains it.
_MEASUREMENT = {"data.eval_batch_size"}
_MEASUREMENT_SECTION = "measure."
ENGINE_PARAM_PREFIX = "engine."  # MLflow params saying how a cell trained (workers, precision, SyncBN): not its identity
HASH_VERSION = "2"  # the ``hash_version`` tag of cells logged with this config_hash (1: measure included)
MAX_PARAM_LENGTH = 6000  # MLflow's longest param value; longer values are cut to it


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
    """Check every ``_bounded`` field of dataclass ``config`` (``section``: its dotted path,
    for messages); returns ``config``."""
    for item in dataclasses.fields(config):
        _check_limits(getattr(config, item.name), item.metadata, f"{section}.{item.name}" if section else item.name)
    return config


def _check_limits(value: Any, limits: dict, key: str) -> None:
    """``InputError`` naming ``key`` when ``value`` breaks a ``_bounded`` field's limits."""
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


def _is_measurement(key: str) -> bool:
    """Whether flattened config ``key`` is a measurement setting (``_MEASUREMENT``, ``measure.*``)."""
    return key in _MEASUREMENT or key.startswith(_MEASUREMENT_SECTION)


def _is_identity(key: str, value: Any) -> bool:
    """Whether flattened config ``key`` belongs to a cell's training identity (``config_hash``)."""
    return not (key in _NOT_HASHED or _is_measurement(key) or key.startswith(ENGINE_PARAM_PREFIX)
                or (key in _HASHED_WHEN_SET and str(value) == str(_HASHED_WHEN_SET[key])))


def config_hash(config: RunConfig) -> str:
    """A stable 16-hex digest of what a cell trains and how it is evaluated: every setting but
    where and how fast it runs and how its cost is measured (``measure.*``, ``data.eval_batch_size``)."""
    semantic = {k: v for k, v in flatten(to_dict(config)).items() if _is_identity(k, v)}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]


def config_params(config: dict) -> dict[str, str]:
    """A resolved config (``to_dict``) as MLflow params: flattened keys, values as text (cut at
    ``MAX_PARAM_LENGTH``), measurement settings left out (they are recorded with each
    measurement and may change after training, which a run's params cannot)."""
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(config).items() if not _is_measurement(k)}


def seedless_settings(params: dict[str, str]) -> dict[str, str]:
    """The training identity of a cell's ``config_params`` without ``train.seed``: two cells are
    seeds of one configuration exactly when these are equal."""
    return {k: v for k, v in params.items() if k != "train.seed" and _is_identity(k, v)}
