"""``key=value`` overrides (the CLI's trailing arguments) applied to a ``RunConfig``."""

from __future__ import annotations

import yaml

from harness.config.parse import from_dict, to_dict
from harness.config.run import RunConfig
from harness.errors import InputError


def parse_override(item: str, example: str = "train.lr=0.01") -> tuple[str, object]:
    """``(key, value)`` of one ``key=value`` string, the value parsed as YAML; ``InputError``
    naming ``item`` (and showing ``example``) when it is not one."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InputError(f"override {item!r}: expected key=value, e.g. {example}")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InputError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of ``config``.

    Keys inside mapping fields (``model.classifier_kwargs.decoder_layers=2``) are set
    as given; every other key must name an existing field.
    """
    data = to_dict(config)
    for item in overrides:
        key, value = parse_override(item)
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise InputError(f"override {item!r}: {'.'.join(parts[: depth + 1])!r} is not a section; "
                                 f"sections here: {', '.join(k for k, v in node.items() if isinstance(v, dict))}")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(RunConfig, data)
