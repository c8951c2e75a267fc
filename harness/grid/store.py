"""Where a grid's results live: its tracking (``harness.tracking.GridTracking``: MLflow, a parent run
per grid and a child run per cell) and an append-only ``results.jsonl``, kept consistent so that
each cell has exactly one FINISHED child run and a FINISHED line, whenever the driver was stopped.
``GridStore`` composes the two; it imports no MLflow.

A cell's child run is created RUNNING when the cell starts (``start_cell``) and receives its
training rows as they come (``log_rows``); when the cell has trained, its result goes into that
run (FINISHED or FAILED) and then to a ``results.jsonl`` line; its measurement, when it comes, is
added to the same run and line (``record_measurement``). On start, ``sync()`` repairs what a
killed driver or a tracking outage can leave behind: a child run left RUNNING is marked KILLED
(its cell runs again and ``start_cell`` re-opens that run, so a cell keeps one run); a FINISHED run without a line gets its
line back from the run's ``cell_result.json``; a line without its run is logged to MLflow
with the weights an offline grid kept (``segheads import-results`` runs the same repair
without a grid, under the grid's lease). Runs logged before ``config_hash`` left the
measurement settings out get today's hash. ``results.jsonl`` may hold several
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

from harness.errors import first_line
from harness.logs import logger
from harness.results import CellResult, read_results
from harness.tracking import GridBusy, GridTracking, LocalGridTracking, MlflowGridTracking, resolve_tracking_uri

__all__ = ["GridBusy", "GridStore", "set_aside_torn_tail"]  # GridBusy: the lease's refusal, harness.grid's name for it

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
    """Grid ``name``'s results: ``results_path`` (``results.jsonl``, every result appended) and its
    tracking, MLflow at ``tracking_uri`` (``tracking=False``: none; module docstring). ``online``
    says whether results still reach the tracking store; ``offline_reason`` why not."""

    def __init__(self, name: str, tracking_uri: str | None, results_path: str | Path, tracking: bool = True) -> None:
        self.name, self.tracking_uri = name, resolve_tracking_uri(tracking_uri)
        self.results_path = Path(results_path)
        self.unlogged = self.imported = 0
        self.local = LocalGridTracking(name, self.results_path, "--no-tracking")  # also where offline weights lie
        self.tracking: GridTracking = self.local
        if tracking:
            self.tracking = MlflowGridTracking(name, self.tracking_uri, advice=(
                "start it, move a damaged file aside or pass --tracking-uri, or run with --no-tracking (results.jsonl "
                "only; `segheads import-results` logs them later)"))

    @property
    def online(self) -> bool:
        return not isinstance(self.tracking, LocalGridTracking)

    @property
    def offline_reason(self) -> str | None:
        return None if self.online else self.tracking.reason

    @property
    def parent_run_id(self) -> str | None:
        return getattr(self.tracking, "parent_run_id", None)

    def lease(self):
        """The grid's driver lease (``harness.tracking.lease``): in the tracking store, or beside
        ``results.jsonl`` without one."""
        return self.tracking.lease()

    def _tracked(self, call, *args) -> bool:
        """``call(*args)`` on the tracking store; if it fails, the store goes offline for the rest
        of the grid (results go on to ``results.jsonl``). Returns whether it succeeded."""
        try:
            call(*args)
            return True
        except Exception as exc:
            self.tracking = LocalGridTracking(self.name, self.results_path, first_line(exc)[:300])
            logger.warning(f"tracking store {self.tracking_uri} failed ({self.offline_reason}); "
                           f"results go to {self.results_path} only from now on")
            return False

    def sync(self) -> dict[str, CellResult]:
        """Repair the tracking store and ``results.jsonl`` (module docstring; offline, nothing to
        repair); every cell's last result by ``config_hash``."""
        lines = read_results(self.results_path)
        if not self.online:
            return lines
        any_status = self.tracking.repair()
        logged = self.tracking.finished_runs
        missing = [h for h, r in lines.items() if (h not in logged if r.finished else h not in any_status)]
        if missing:
            self.open_parent()
        for digest in sorted(missing):
            self.record(lines[digest], append=False, weights=self.local.weights(lines[digest]))
        for digest in sorted(set(logged) - {h for h, r in lines.items() if r.finished}):
            lines[digest] = self.tracking.read_result(digest)
            self._append(lines[digest])
        self.imported = len(missing)
        return lines

    def trained_weights(self, result: CellResult) -> bytes | None:
        """A FINISHED cell's logged weights (its run's ``weights.pt``, or the file an offline run
        kept); None when there are none."""
        if self.online and result.config_hash in self.tracking.finished_runs:
            return self.tracking.weights(result)
        return self.local.weights(result)

    def open_parent(self, cells: int | None = None) -> str | None:
        """The grid's parent run (re-opened when the grid ran before), status RUNNING; None offline."""
        return self.tracking.open_parent(cells)

    def start_cell(self, digest: str, tags: dict) -> None:
        """Cell ``digest`` starts (or restarts) training: its child run RUNNING, with the cell's ``tags``."""
        self._tracked(self.tracking.start_cell, digest, tags)

    def log_rows(self, digest: str, rows: list[dict]) -> None:
        """A training cell's new rows as step metrics of its live run (``tracking.log_rows``)."""
        self._tracked(self.tracking.log_rows, digest, rows)

    def record(self, result: CellResult, append: bool = True, weights: bytes | None = None) -> None:
        """Log ``result`` (and the cell's trained ``weights``) to the tracking store, into the cell's
        live run when it has one, then append its line; if the store fails, go offline and append
        the line anyway (``unlogged`` counts those). Offline, the weights go to
        ``weights/<config_hash>.pt`` beside ``results.jsonl``."""
        if not (self.online and self._tracked(self.tracking.record, result, weights)):
            self.unlogged += 1
            self.tracking.record(result, weights)
        if append:
            self._append(result)

    def record_measurement(self, result: CellResult) -> None:
        """A FINISHED cell measured again: its run updated in place (``tracking.update_measurement``),
        then its new line appended; offline (or without a run), the line only."""
        self._tracked(self.tracking.record_measurement, result)
        self._append(result)

    def _append(self, result: CellResult) -> None:
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        aside = set_aside_torn_tail(self.results_path)
        if aside is not None:
            logger.warning(f"{self.results_path} ended in a torn line (a writer killed mid-write); moved it to {aside}")
        with open(self.results_path, "a") as out:
            out.write(result.to_json(indent=None) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def close_parent(self, results: list[CellResult]) -> None:
        finished = sum(r.finished for r in results)
        try:
            self.tracking.close_parent(finished, len(results) - finished)
        except Exception as exc:  # the cells' results are safe in results.jsonl
            logger.warning(f"could not close the grid's parent run ({first_line(exc)[:300]})")
