"""A cell's identity: ``config_hash`` (what it trains and how it is evaluated), its MLflow params and
the seed-free settings that group seeds into one configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from harness.config.parse import flatten, to_dict
from harness.config.run import EvalConfig, PhotometricConfig, RunConfig


# Settings that change where or how fast a cell runs, not what it computes.
# Keys added after cells were logged, with the value they had implicitly: left out of the hash
# at that value, so those cells keep theirs.
def _defaults(section: str, cls: type) -> dict[str, Any]:
    """``{"<section>.<field>": default}`` for every field of dataclass ``cls``."""
    return {f"{section}.{item.name}": item.default if item.default is not dataclasses.MISSING else item.default_factory()
            for item in dataclasses.fields(cls)}


_HASHED_WHEN_SET = {"model.neck_kwargs": {}, "model.sync_bn": "auto", "train.accumulate": 1, "train.precision": "fp32",
                    "model.init": "torch", "train.param_groups": {}, "trunk.train": False, "trunk.digest": None,
                    "data.short_side": None, "data.max_long_side": None, "data.resize_backend": "pillow", "data.cat_max_ratio": 1.0, "train.schedule": "poly",
                    "train.warmup_ratio": 1e-3, "train.min_lr": 0.0, "plugins": {},
                    **_defaults("eval", EvalConfig), **_defaults("data.photometric", PhotometricConfig)}
# Where a trunk's weights are kept is not what the cell trains on: its ``trunk.digest`` is.
_NOT_HASHED = {"trunk.run", "trunk.checkpoint", "device", "output_dir", "tracking_uri", "experiment", "data.num_workers", "train.threads",
               "train.log_period", "train.checkpoint_period", "train.eval_period"}
# How a trained cell's cost is measured (recorded with each measurement, never its identity)
# and how fast it is evaluated: changing them re-measures a FINISHED cell, never retrains it.
_MEASUREMENT = {"data.eval_batch_size"}
_MEASUREMENT_SECTION = "measure."
ENGINE_PARAM_PREFIX = "engine."  # MLflow params saying how a cell trained (workers, precision, SyncBN): not its identity
HASH_VERSION = "2"  # the ``hash_version`` tag of cells logged with this config_hash (1: measure included)
MAX_PARAM_LENGTH = 6000  # MLflow's longest param value; longer values are cut to it


def _is_measurement(key: str) -> bool:
    """Whether flattened config ``key`` is a measurement setting (``_MEASUREMENT``, ``measure.*``)."""
    return key in _MEASUREMENT or key.startswith(_MEASUREMENT_SECTION)


def _is_identity(key: str, value: Any) -> bool:
    """Whether flattened config ``key`` belongs to a cell's training identity (``config_hash``)."""
    return not (key in _NOT_HASHED or _is_measurement(key) or key.startswith(ENGINE_PARAM_PREFIX)
                or (key in _HASHED_WHEN_SET and str(value) == str(_HASHED_WHEN_SET[key])))


def config_hash(config: RunConfig) -> str:
    """A stable 16-hex digest of what a cell trains and how it is evaluated: every setting but
    where and how fast it runs and how its cost is measured (``measure.*``, ``data.eval_batch_size``);
    a trunk counts by its weights' ``trunk.digest`` (by its source until that is resolved)."""
    flat = flatten(to_dict(config))
    semantic = {k: v for k, v in flat.items() if _is_identity(k, v)}
    if config.trunk.enabled and config.trunk.digest is None:  # not resolved yet: its source stands for its weights
        semantic.update({k: flat[k] for k in ("trunk.run", "trunk.checkpoint")})
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
