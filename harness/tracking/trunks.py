"""Resolving cells' ``trunk`` sections before they run: each trunk's weights made one file every
worker reads (``trunk.checkpoint``, absolute) and pinned by digest (``trunk.digest``)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from harness.config import RunConfig, TrunkConfig
from harness.engine import trunk_digest, trunk_file, trunk_state
from harness.errors import InputError
from harness.files import staged_file
from harness.tracking.artifacts import WEIGHTS_ARTIFACT, read_artifact_bytes
from harness.tracking.client import experiment_id, open_client, resolve_tracking_uri

_RUN_ID = re.compile(r"[0-9a-f]{32}")
TRUNKS = "trunks"  # the folder, beside a grid's run folders, of the trunks its cells read


def _run_id(reference: str, tracking_uri: str) -> str:
    """The MLflow run ``trunk.run`` names: a run id, or ``<experiment>/<run name>`` (its newest FINISHED run)."""
    if _RUN_ID.fullmatch(reference):
        return reference
    experiment, _, name = reference.partition("/")
    if not experiment or not name:
        raise InputError(f"trunk.run={reference!r}: expected a run id (32 hex) or <experiment>/<run name>, "
                         "e.g. quickstart/softmax@resnet10t-s0")
    client = open_client(tracking_uri)
    quoted = name.replace("'", "\\'")
    runs = client.search_runs([experiment_id(client, experiment, tracking_uri)],
                              f"attributes.run_name = '{quoted}' and attributes.status = 'FINISHED'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise InputError(f"trunk.run={reference!r}: experiment {experiment!r} in {tracking_uri} has no FINISHED run "
                         f"named {name!r}; run its grid first (segheads grid), or find the run in segheads ui")
    return runs[0].info.run_id


def _write_once(folder: Path, data: bytes, digest: str) -> Path:
    """``data`` as ``folder/<digest>.pt``, written whole (a temporary file renamed) unless already there."""
    path = folder / f"{digest}.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with staged_file(path) as part:
            part.write(data)
    return path


def resolve_trunk(trunk: TrunkConfig, tracking_uri: str | None, folder: Path | None) -> TrunkConfig:
    """``trunk`` with its weights' ``digest`` and an absolute ``checkpoint`` file: the file itself,
    or, for ``run``, the run's ``weights.pt`` written to ``folder/<digest>.pt`` (``folder`` None:
    digest only, nothing written, as a dry run wants)."""
    if not trunk.enabled:
        return trunk
    if trunk.checkpoint is not None:
        path = trunk_file(trunk.checkpoint).resolve()
        data, where = path.read_bytes(), f"trunk.checkpoint={trunk.checkpoint!r}"
    else:
        uri = resolve_tracking_uri(tracking_uri)
        run_id = _run_id(trunk.run, uri)
        data, where, path = read_artifact_bytes(run_id, WEIGHTS_ARTIFACT, uri), f"trunk.run={trunk.run!r}", None
    trunk_state(data, where)  # a file that holds no trunk fails here, before any cell starts
    digest = trunk_digest(data)
    if path is None and folder is not None:
        path = _write_once(Path(folder).resolve(), data, digest)
    return dataclasses.replace(trunk, digest=digest, checkpoint=str(path) if path is not None else None)


def resolve_trunks(cells: list[RunConfig], tracking_uri: str | None, folder: Path | None) -> list[RunConfig]:
    """Every cell with its trunk resolved (``resolve_trunk``), each distinct trunk read once."""
    resolved: dict[tuple, TrunkConfig] = {}
    out = []
    for cfg in cells:
        key = (cfg.trunk.run, cfg.trunk.checkpoint, cfg.trunk.train)
        if key not in resolved:
            resolved[key] = resolve_trunk(cfg.trunk, tracking_uri, folder)
        out.append(dataclasses.replace(cfg, trunk=resolved[key]))
    return out
