"""Configuration: the settings of one cell as checked dataclasses, and its identity.

- ``run``: ``RunConfig`` and its sections (``ModelConfig``, ``DataConfig``, ``TrainConfig``,
  ``MeasureConfig``, ``EvalConfig``, ``TrunkConfig``; ``PhotometricConfig`` inside ``DataConfig``), each field with its limits.
- ``parse``: plain dicts (safe-loaded YAML) into those dataclasses and back (``from_dict``,
  ``to_dict``, ``read_yaml``, ``flatten``); unknown keys, wrong types and values out of bounds are
  ``InputError``s naming the dotted key.
- ``overrides``: ``apply_overrides`` (``a.b=value`` strings, values parsed as YAML; one of them:
  ``parse_override``).
- ``identity``: ``config_hash`` (what a cell trains and how it is evaluated, never where or how
  fast it runs, nor how its cost is measured), ``config_params`` (MLflow params) and
  ``seedless_settings`` (seeds of one configuration share them).
"""

from harness.config.identity import (
    ENGINE_PARAM_PREFIX,
    HASH_VERSION,
    MAX_PARAM_LENGTH,
    config_hash,
    config_params,
    seedless_settings,
)
from harness.config.overrides import apply_overrides, parse_override
from harness.config.parse import bounded, check_fields, flatten, from_dict, read_yaml, to_dict
from harness.config.run import (
    DataConfig,
    EvalConfig,
    MeasureConfig,
    ModelConfig,
    PhotometricConfig,
    RunConfig,
    TrainConfig,
    TrunkConfig,
)

__all__ = [
    "ENGINE_PARAM_PREFIX",
    "HASH_VERSION",
    "MAX_PARAM_LENGTH",
    "DataConfig",
    "EvalConfig",
    "MeasureConfig",
    "PhotometricConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "TrunkConfig",
    "apply_overrides",
    "bounded",
    "check_fields",
    "config_hash",
    "config_params",
    "flatten",
    "from_dict",
    "parse_override",
    "read_yaml",
    "seedless_settings",
    "to_dict",
]
