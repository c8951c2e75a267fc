"""Where a grid's results live: MLflow (a parent run per grid, a child run per cell) and an
append-only ``results.jsonl``, kept consistent so that each cell has exactly one FINISHED
child run and a FINISHED line, whenever the driver was stopped.

A cell's child run is created RUNNING when the cell starts (``start_cell``) and receives its
training rows as they come (``log_rows``); when the cell has trained, its result goes into that
run (FINISHED or FAILED) and then to a ``results.jsonl`` line; its measurement, when it comes, is
added to the same run and line (``record_measurement``). On start, ``sync()`` repairs what a
killed driver or a tracking outage can leave behind: a child run left RUNNING is marked KILLED
(its cell runs again and ``start_cell`` re-opens that run, so a cell keeps one run); a FINISHED run without a line gets its
line back from the run's ``cell_result.json``; a line without its run is logged to MLflow
with the weights an offline grid kept (``segheads import-results`` runs the same repair
without a grid, under the grid's lease). Runs logged before ``config_hash`` left the
measurement settings out get today's hash (``_rehash``). ``results.jsonl`` may hold several
lines for one cell (a FAILED attempt, then a FINISHED one; a re-measurement); the last line
of a cell wins. A line torn by a killed writer is moved aside before the next append
(``set_aside_torn_tail``), so a fragment never glues to the next line.

The tracking store is probed when the store opens (an ``InputError`` if it cannot be
reached, within seconds, not after MLflow's minutes of retries). If logging fails later,
the store goes offline for the rest of the grid: results still go to ``results.jsonl``
and ``unlogged`` counts what ``segheads import-results`` has to log. ``tracking=False``
keeps ``results.jsonl`` only from the start.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from harness.config import HASH_VERSION, RunConfig, config_hash, from_dict
from harness.errors import InputError, first_line
from harness.grid.lease import FileLease, TrackingLease
from harness.measure import MEASUREMENT_PREFIXES
from harness.results import CellResult, read_results
from harness.tracking import (WEIGHTS_ARTIFACT, cell_run_tags, log_cell, log_rows, open_client, quick_http_failures,
                              read_artifact, read_artifact_bytes, read_result, resolve_tracking_uri,
                              search_all_runs, store_label, update_measurement)

_PARENT_TAG = "segheads.grid"


def set_aside_torn_tail(path: Path) -> Path | None:
    """If ``path`` does not end with a newline (a writer killed mid-line), move the bytes after
    its last newline to ``<path>.torn`` (appended, so nothing is lost) and cut them from
    ``path``, so that the next line starts on a line of its own. Returns where they went."""
    if not path.exists():
        return None
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if not size:
            return None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        start = size
        while start > 0:  # back to just after the last newline, a block at a time
            block = min(1 << 20, start)
            handle.seek(start - block)
            newline = handle.read(block).rfind(b"\n")
            if newline >= 0:
                start = start - block + newline + 1
                break
            start -= block
        handle.seek(start)
        torn = handle.read()
        aside = path.with_name(path.name + ".torn")
        with open(aside, "ab") as out:
            out.write(torn + b"\n")
            out.flush()
            os.fsync(out.fileno())
        handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())
    return aside


class GridStore:
    def __init__(self, name: str, tracking_uri: str | None, results_path: str | Path, tracking: bool = True,
                 log=print) -> None:
        self.name, self.tracking_uri = name, resolve_tracking_uri(tracking_uri)
        self.results_path = Path(results_path)
        self.log = log
        self.offline: str | None = None if tracking else "--no-tracking"
        self.unlogged = self.imported = 0
        self.parent_run_id = None
        self.run_ids: dict[str, str] = {}  # config_hash -> its FINISHED run (after sync)
        self.live: dict[str, str] = {}  # config_hash -> the run of a cell training now
        if not tracking:
            return
        self.client = open_client(self.tracking_uri, advice=(
            "start it, move a damaged file aside or pass --tracking-uri, or run with --no-tracking (results.jsonl "
            "only; `segheads import-results` logs them later)"))
        try:
            with quick_http_failures():
                found = self.client.get_experiment_by_name(name)
                self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        except Exception as exc:
            if "already exists" not in str(exc):  # another driver created it a moment ago
                raise InputError(f"tracking store {store_label(self.tracking_uri)}: cannot create experiment "
                                 f"{name!r} ({first_line(exc)[:300]})") from None
            self.experiment_id = self.client.get_experiment_by_name(name).experiment_id
        parents = self._runs(f"tags.`{_PARENT_TAG}` = '{name}'")
        self.parent_run_id = parents[0].info.run_id if parents else None

    def lease(self):
        """The grid's driver lease (``harness.grid.lease``): in the tracking store, or beside
        ``results.jsonl`` without one."""
        if self.offline:
            return FileLease(self.results_path, self.name)
        return TrackingLease(self.client, self.experiment_id, self.name)

    def _runs(self, filter_string: str) -> list:
        return search_all_runs(self.client, [self.experiment_id], filter_string, ["attributes.start_time DESC"])

    def sync(self) -> dict[str, CellResult]:
        """Repair MLflow and ``results.jsonl`` (module docstring; offline, nothing to repair); every
        cell's last result by ``config_hash``."""
        if self.offline:
            return read_results(self.results_path)
        for run in self._runs("attributes.status = 'RUNNING' and tags.config_hash != ''"):
            self.client.set_terminated(run.info.run_id, "KILLED")
        runs = self._runs("tags.config_hash != ''")
        if self._rehash(runs):
            runs = self._runs("tags.config_hash != ''")
        self.run_ids = {}
        for run in runs:  # newest first: the newest FINISHED run of a cell is its run
            if run.info.status == "FINISHED":
                self.run_ids.setdefault(run.data.tags["config_hash"], run.info.run_id)
        logged = self.run_ids
        any_status = {run.data.tags["config_hash"] for run in runs}
        lines = read_results(self.results_path)
        missing = [h for h, r in lines.items()
                   if (h not in logged if r.finished else h not in any_status)]
        for digest in sorted(missing):
            self.record(lines[digest], self.open_parent(), append=False, weights=self._offline_weights(lines[digest]))
        for digest in sorted(set(logged) - {h for h, r in lines.items() if r.finished}):
            lines[digest] = read_result(logged[digest], self.tracking_uri).rehashed(digest)
            self._append(lines[digest])
        self.imported = len(missing)
        return lines

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
                config = yaml.safe_load(read_artifact(run.info.run_id, "config.yaml", self.tracking_uri))
                digest = config_hash(from_dict(RunConfig, config))
            except InputError:  # logging failed before its config: it stays as it is
                continue
            for key, value in (("config_hash_v1", tags["config_hash"]), ("config_hash", digest),
                               ("hash_version", HASH_VERSION)):
                self.client.set_tag(run.info.run_id, key, value)
            changed += 1
        return changed

    def _offline_weights(self, result: CellResult) -> bytes | None:
        """The weights an offline run kept for ``result`` (``weights/<config_hash>.pt``), if any."""
        for digest in (result.config_hash, result.config_hash_v1):
            path = self.results_path.parent / "weights" / f"{digest}.pt"
            if digest and path.is_file():
                return path.read_bytes()
        return None

    def trained_weights(self, result: CellResult) -> bytes | None:
        """A FINISHED cell's logged weights (its run's ``weights.pt``, or the file an offline run
        kept); None when there are none."""
        run_id = None if self.offline else self.run_ids.get(result.config_hash)
        if run_id is None:
            return self._offline_weights(result)
        try:
            return read_artifact_bytes(run_id, WEIGHTS_ARTIFACT, self.tracking_uri)
        except InputError:
            return None

    def record_measurement(self, result: CellResult) -> None:
        """A FINISHED cell measured again: its run updated in place (``tracking.update_measurement``),
        then its new line appended; offline (or without a run), the line only."""
        run_id = None if self.offline else self.run_ids.get(result.config_hash)
        if run_id is not None:
            try:
                with quick_http_failures(retries=2):
                    update_measurement(result, run_id, self.tracking_uri, MEASUREMENT_PREFIXES)
            except Exception as exc:
                self._go_offline(exc)
        self._append(result)

    def _go_offline(self, exc: BaseException) -> None:
        self.offline = first_line(exc)[:300]
        self.log(f"[segheads] warning: tracking store {self.tracking_uri} failed ({self.offline}); "
                 f"results go to {self.results_path} only from now on")

    def open_parent(self, cells: int | None = None) -> str | None:
        """The grid's parent run (re-opened when the grid ran before), status RUNNING; None offline."""
        if self.offline:
            return None
        if self.parent_run_id is None:
            tags = {_PARENT_TAG: self.name, "mlflow.runName": self.name}
            self.parent_run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(self.parent_run_id, status="RUNNING")
        if cells is not None:
            self.client.set_tag(self.parent_run_id, "cells", str(cells))
        return self.parent_run_id

    def start_cell(self, digest: str, tags: dict, parent_run_id: str | None) -> None:
        """Open the child run of cell ``digest``, which starts (or restarts) training: the run a
        killed driver left (RUNNING or KILLED) is re-opened, else one is created, RUNNING, with
        the cell's ``tags``. Nothing offline."""
        if self.offline or digest in self.live:
            return
        try:
            with quick_http_failures(retries=2):
                left = self._runs(f"tags.config_hash = '{digest}' and attributes.status != 'FINISHED' "
                                  "and attributes.status != 'FAILED'")
                if left:
                    run_id = left[0].info.run_id
                    self.client.update_run(run_id, status="RUNNING")
                else:
                    run_id = self.client.create_run(self.experiment_id,
                                                    tags=cell_run_tags(tags, parent_run_id)).info.run_id
            self.live[digest] = run_id
        except Exception as exc:
            self._go_offline(exc)

    def log_rows(self, digest: str, rows: list[dict]) -> None:
        """A training cell's new rows as step metrics of its live run (``tracking.log_rows``)."""
        run_id = None if self.offline else self.live.get(digest)
        if run_id is None:
            return
        try:
            with quick_http_failures(retries=2):
                log_rows(self.client, run_id, rows)
        except Exception as exc:
            self._go_offline(exc)

    def record(self, result: CellResult, parent_run_id: str | None, append: bool = True, weights: bytes | None = None) -> None:
        """Log ``result`` (and the cell's trained ``weights``) to MLflow, into the cell's live run
        when it has one, then append its line; if MLflow fails, go offline and append the line
        anyway (``unlogged`` counts those). Offline, the weights go to ``weights/<config_hash>.pt``
        beside ``results.jsonl``."""
        digest = result.config_hash
        live = self.live.pop(digest, None)
        if not self.offline:
            try:
                with quick_http_failures(retries=2):
                    run_id = log_cell(result, self.tracking_uri, self.name, parent_run_id, weights=weights,
                                      run_id=live)
                if result.finished:
                    self.run_ids[digest] = run_id
            except Exception as exc:
                self._go_offline(exc)
        if self.offline:
            self.unlogged += 1
            if weights is not None:
                path = self.results_path.parent / "weights" / f"{result.config_hash}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(weights)
        if append:
            self._append(result)

    def _append(self, result: CellResult) -> None:
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        aside = set_aside_torn_tail(self.results_path)
        if aside is not None:
            self.log(f"[segheads] {self.results_path} ended in a torn line (a writer killed mid-write); "
                     f"moved it to {aside}")
        with open(self.results_path, "a") as out:
            out.write(result.to_json(indent=None) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def close_parent(self, parent_run_id: str | None, results: list[CellResult]) -> None:
        if self.offline or parent_run_id is None:
            return
        finished = sum(r.finished for r in results)
        try:
            with quick_http_failures():
                self.client.log_metric(parent_run_id, "cells_finished", finished)
                self.client.log_metric(parent_run_id, "cells_failed", len(results) - finished)
                self.client.set_terminated(parent_run_id, "FINISHED")
        except Exception as exc:  # the cells' results are safe in results.jsonl
            self.log(f"[segheads] warning: could not close the grid's parent run ({first_line(exc)[:300]})")
