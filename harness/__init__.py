"""segheads harness, one package per job (docs/architecture.md, "Packages"): ``config``, ``data``,
``modeling``, ``solver``, ``engine``, ``evaluation``, ``measure``, ``results`` (``CellResult``),
``tracking``, ``grid``, ``report``, ``check`` and ``cli``.

Kept import-light on purpose: ``backbones`` and ``classifiers`` import
``harness.errors`` and must not pull in torch-heavy or MLflow modules through it.
"""

import os

__version__ = "0.1.0"

# Ray reads this when it is first imported, and without it a local Ray listens on every
# interface (GCS, raylet, workers, dashboard agent). Set here, before any segheads code
# can import Ray, so local Ray stays on 127.0.0.1 whatever the caller exported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# No usage reports leave the machine unless the user asks for them (an exported value wins):
# Ray's usage stats, MLflow's telemetry and the tools that honour DO_NOT_TRACK.
for _key, _value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(_key, _value)
