"""CellResult serialisation: strict JSON, non-finite floats written as null."""

from __future__ import annotations

import json
import math
from typing import Any


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def to_json(result: dict, indent: int | None = 2) -> str:
    return json.dumps(_finite_or_none(result), indent=indent, allow_nan=False)
