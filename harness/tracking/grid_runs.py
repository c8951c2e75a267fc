"""A grid's runs in a tracking store, behind one small interface (``GridTracking``) that the grid's
``GridStore`` composes with its ``results.jsonl``:

- ``MlflowGridTracking``: MLflow, an experiment per grid with a parent run and a child run per
  cell (``docs/architecture.md``, "Tracking"), the driver lease in the store (``TrackingLease``);
- ``LocalGridTracking``: no tracking store (``--no-tracking``, or after the store failed): the
  trained weights as ``weights/<config_hash>.pt`` beside ``results.jsonl`` and a file lease.

A cell's life in either: ``start_cell`` (RUNNING), ``log_rows`` (its training rows as they come),
``record`` (its result, FINISHED or FAILED, with its weights), ``record_measurement``; a grid's:
``lease``, ``repair`` (what a killed driver left), ``open_parent`` / ``close_parent``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.config import HASH_VERSION, RunConfig, config_hash, from_dict
from harness.errors import InputError, first_line
from harness.results import CellResult
from harness.tracking.artifacts import WEIGHTS_ARTIFACT, read_artifact, read_artifact_bytes
from harness.tracking.client import ensure_experiment, open_client, quick_http_failures, search_all_runs, store_label
from harness.tracking.lease import DriverLease, FileLease, TrackingLease
from harness.tracking.log import cell_run_tags, log_cell, log_rows, update_measurement
from harness.tracking.read import read_result

PARENT_TAG = "segheads.grid"


class GridTracking:
    """Where a grid's cells are tracked besides ``results.jsonl`` (module docstring). ``label``
    names it in the driver's log; ``finished_runs`` maps each cell's ``config_hash`` to its
    FINISHED run (filled by ``repair``)."""

    label: str = ""
    finished_runs: dict[str, str]

    def lease(self) -> DriverLease:
        raise NotImplementedError

    def repair(self) -> set[str]:
        """Mark runs a killed driver left RUNNING as KILLED and give runs logged under an older
        ``config_hash`` today's; fill ``finished_runs``. Returns the cells with a run of any status."""
        return set()

    def read_result(self, digest: str) -> CellResult:
        """The result the FINISHED run of cell ``digest`` holds."""
        raise NotImplementedError

    def open_parent(self, cells: int | None = None) -> str | None:
        """The grid's parent run, created or re-opened (RUNNING); None where there are no runs."""
        return None

    def close_parent(self, finished: int, failed: int) -> None:
        """The parent run FINISHED, with how many cells finished and failed."""

    def start_cell(self, digest: str, tags: dict) -> None:
        """Cell ``digest`` starts (or restarts) training: its run RUNNING."""

    def log_rows(self, digest: str, rows: list[dict]) -> None:
        """A training cell's new rows (``{"iteration", "loss/...", ...}``) as step metrics of its run."""

    def record(self, result: CellResult, weights: bytes | None = None) -> None:
        """A cell that trained (or failed) and its trained ``weights``."""
        raise NotImplementedError

    def record_measurement(self, result: CellResult) -> None:
        """A FINISHED cell's new cost measurement, into its existing run."""

    def weights(self, result: CellResult) -> bytes | None:
        """A FINISHED cell's trained weights, None when none were kept."""
        raise NotImplementedError


class LocalGridTracking(GridTracking):
    """No tracking store: the weights beside ``results_path`` (``weights/<config_hash>.pt``), the
    lease a file lock there. ``reason`` says why (``--no-tracking``, or how the store failed)."""

    def __init__(self, name: str, results_path: Path, reason: str) -> None:
        self.name, self.results_path, self.reason = name, results_path, reason
        self.label = f"off ({reason})"
        self.finished_runs = {}

    def lease(self) -> DriverLease:
        return FileLease(self.results_path, self.name)

    def _path(self, digest: str) -> Path:
        return self.results_path.parent / "weights" / f"{digest}.pt"

    def record(self, result: CellResult, weights: bytes | None = None) -> None:
        if weights is not None:
            path = self._path(result.config_hash)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(weights)

    def weights(self, result: CellResult) -> bytes | None:
        for digest in (result.config_hash, result.config_hash_v1):
            if digest and self._path(digest).is_file():
                return self._path(digest).read_bytes()
        return None


class MlflowGridTracking(GridTracking):
    """Grid ``name`` in the MLflow store ``uri`` (probed on creation: a one-line ``InputError``
    naming the store, with ``advice``, when it cannot be reached). Every call fails in seconds on
    an unreachable server (``quick_http_failures``), for ``GridStore`` to go on without it."""

    def __init__(self, name: str, uri: str, advice: str) -> None:
        self.name, self.uri, self.label = name, uri, uri
        self.client = open_client(uri, advice=advice)
        try:
            with quick_http_failures():
                self.experiment_id = ensure_experiment(self.client, name, uri)
        except Exception as exc:
            if "already exists" not in str(exc):  # another driver created it a moment ago
                raise InputError(f"tracking store {store_label(uri)}: cannot create experiment "
                                 f"{name!r} ({first_line(exc)[:300]})") from None
            self.experiment_id = self.client.get_experiment_by_name(name).experiment_id
        parents = self._runs(f"tags.`{PARENT_TAG}` = '{name}'")
        self.parent_run_id = parents[0].info.run_id if parents else None
        self.finished_runs: dict[str, str] = {}
        self._live: dict[str, str] = {}  # config_hash -> the run of a cell training now

    def _runs(self, filter_string: str) -> list:
        return search_all_runs(self.client, [self.experiment_id], filter_string, ["attributes.start_time DESC"])

    def lease(self) -> DriverLease:
        return TrackingLease(self.client, self.experiment_id, self.name)

    def repair(self) -> set[str]:
        for run in self._runs("attributes.status = 'RUNNING' and tags.config_hash != ''"):
            self.client.set_terminated(run.info.run_id, "KILLED")
        runs = self._runs("tags.config_hash != ''")
        if self._rehash(runs):
            runs = self._runs("tags.config_hash != ''")
        self.finished_runs = {}
        for run in runs:  # newest first: the newest FINISHED run of a cell is its run
            if run.info.status == "FINISHED":
                self.finished_runs.setdefault(run.data.tags["config_hash"], run.info.run_id)
        return {run.data.tags["config_hash"] for run in runs}

    def _rehash(self, runs: list) -> int:
        """Give runs logged before ``hash_version`` 2 (whose ``config_hash`` covered the
        measurement settings) today's ``config_hash``, computed from their ``config.yaml``; the
        old one is kept as tag ``config_hash_v1``. Returns how many runs changed."""
        changed = 0
        for run in runs:
            tags = run.data.tags
            if tags.get("hash_version") == HASH_VERSION:
                continue
            try:
                config = yaml.safe_load(read_artifact(run.info.run_id, "config.yaml", self.uri))
                digest = config_hash(from_dict(RunConfig, config))
            except InputError:  # logging failed before its config: it stays as it is
                continue
            for key, value in (("config_hash_v1", tags["config_hash"]), ("config_hash", digest),
                               ("hash_version", HASH_VERSION)):
                self.client.set_tag(run.info.run_id, key, value)
            changed += 1
        return changed

    def read_result(self, digest: str) -> CellResult:
        return read_result(self.finished_runs[digest], self.uri).rehashed(digest)

    def open_parent(self, cells: int | None = None) -> str | None:
        if self.parent_run_id is None:
            tags = {PARENT_TAG: self.name, "mlflow.runName": self.name}
            self.parent_run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(self.parent_run_id, status="RUNNING")
        if cells is not None:
            self.client.set_tag(self.parent_run_id, "cells", str(cells))
        return self.parent_run_id

    def close_parent(self, finished: int, failed: int) -> None:
        if self.parent_run_id is None:
            return
        with quick_http_failures():
            self.client.log_metric(self.parent_run_id, "cells_finished", finished)
            self.client.log_metric(self.parent_run_id, "cells_failed", failed)
            self.client.set_terminated(self.parent_run_id, "FINISHED")

    def start_cell(self, digest: str, tags: dict) -> None:
        """The run a killed driver left (RUNNING or KILLED) is re-opened, else one is created."""
        if digest in self._live:
            return
        with quick_http_failures(retries=2):
            left = self._runs(f"tags.config_hash = '{digest}' and attributes.status != 'FINISHED' "
                              "and attributes.status != 'FAILED'")
            if left:
                run_id = left[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.client.create_run(self.experiment_id,
                                                tags=cell_run_tags(tags, self.parent_run_id)).info.run_id
        self._live[digest] = run_id

    def log_rows(self, digest: str, rows: list[dict]) -> None:
        if digest in self._live:
            with quick_http_failures(retries=2):
                log_rows(self.client, self._live[digest], rows)

    def record(self, result: CellResult, weights: bytes | None = None) -> None:
        """Into the cell's live run when it has one (``tracking.log_cell``)."""
        live = self._live.pop(result.config_hash, None)
        with quick_http_failures(retries=2):
            run_id = log_cell(result, self.uri, self.name, self.parent_run_id, weights=weights, run_id=live)
        if result.finished:
            self.finished_runs[result.config_hash] = run_id

    def record_measurement(self, result: CellResult) -> None:
        run_id = self.finished_runs.get(result.config_hash)
        if run_id is not None:
            with quick_http_failures(retries=2):
                update_measurement(result, run_id, self.uri)

    def weights(self, result: CellResult) -> bytes | None:
        run_id = self.finished_runs.get(result.config_hash)
        if run_id is None:
            return None
        try:
            return read_artifact_bytes(run_id, WEIGHTS_ARTIFACT, self.uri)
        except InputError:
            return None
