"""One driver per grid: a lease held in the grid's tracking store, so it holds across
machines that share a tracking server, or (``--no-tracking``) a lock beside ``results.jsonl``.

Tracking store: a driver creates a lease run (tag ``segheads.lease`` = the grid's name,
with its host, process id, start time and a heartbeat), then lists the grid's live leases.
It goes on only if its own is the only one; otherwise it withdraws (deletes its lease run).
If another lease is held, it refuses with ``GridBusy`` naming that driver; if the others are
only candidates, it backs off for a random moment and tries again. Two drivers cannot both
go on: whichever created its lease second sees the first's when it lists. A lease is live
while its heartbeat (renewed every ``HEARTBEAT_SECONDS`` by the driver's loop) is younger
than ``EXPIRY_SECONDS`` and, on this host, its process exists; so a driver that died leaves
a lease that expires and a re-run resumes. Released leases are deleted (MLflow's UI and
every segheads query skip deleted runs).

``--no-tracking``: an exclusive ``flock`` on ``.driver.lock`` beside ``results.jsonl``, which
the kernel releases when the process ends (one host only, as ``results.jsonl`` is).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import InputError
from harness.tracking.client import quick_http_failures, search_all_runs

LEASE_TAG = "segheads.lease"
HEARTBEAT_SECONDS = 30.0
EXPIRY_SECONDS = 300.0
_ATTEMPTS = 20
_RELEASED: set[str] = set()  # lease runs this process released (their deletion may have failed)


class GridBusy(InputError):
    """Another live driver holds the grid."""


def _holder() -> dict[str, str]:
    now = time.time()
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "started": f"{now:.3f}", "heartbeat": f"{now:.3f}"}


def _describe(holder: dict[str, str]) -> str:
    started = datetime.fromtimestamp(float(holder.get("started", 0)), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {started}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(tags: dict[str, str], now: float) -> bool:
    if now - float(tags.get("heartbeat", 0)) > EXPIRY_SECONDS:
        return False
    if tags.get("host") == socket.gethostname():
        return _process_exists(int(tags.get("pid", 0)))
    return True


class DriverLease:
    """What a grid's driver holds while it runs: ``acquire`` (or ``GridBusy``), ``renew`` from its
    loop, ``release``."""

    def acquire(self) -> None:
        raise NotImplementedError

    def renew(self) -> None:
        """Nothing to refresh unless the lease expires."""

    def release(self) -> None:
        raise NotImplementedError


class TrackingLease(DriverLease):
    """The lease of grid ``name`` in MLflow experiment ``experiment_id`` (module docstring)."""

    def __init__(self, client, experiment_id: str, name: str) -> None:
        self.client, self.experiment_id, self.name = client, experiment_id, name
        self.run_id: str | None = None
        self.renewed = 0.0

    def _leases(self) -> list:
        return search_all_runs(self.client, [self.experiment_id], f"tags.`{LEASE_TAG}` = '{self.name}'")

    def acquire(self) -> None:
        """Hold the lease or raise ``GridBusy`` naming the driver that holds it."""
        for _ in range(_ATTEMPTS):
            holder = _holder()
            tags = {LEASE_TAG: self.name, "state": "candidate", "mlflow.runName": f"driver lease {self.name}", **holder}
            mine = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            now, others, held = time.time(), [], None
            for run in self._leases():
                if run.info.run_id == mine:
                    continue
                if run.info.run_id in _RELEASED or not _alive(run.data.tags, now):
                    self._delete(run.info.run_id)  # a dead driver's lease, or one released while the store was down
                    continue
                others.append(run)
                if run.data.tags.get("state") == "held":
                    held = run
            if not others:
                self.client.set_tag(mine, "state", "held")
                self.run_id, self.renewed = mine, now
                return
            self._delete(mine)
            if held is not None:
                raise GridBusy(f"grid {self.name!r} is being run by another driver ({_describe(held.data.tags)}); "
                               f"wait for it to end, or stop it (a dead driver's lease expires after "
                               f"{EXPIRY_SECONDS:.0f} s)")
            time.sleep(random.uniform(0.2, 2.0))  # candidates only: another driver is deciding too
        raise GridBusy(f"grid {self.name!r}: could not take the driver lease after {_ATTEMPTS} tries "
                       "(other drivers keep starting); try again")

    def renew(self) -> None:
        """Refresh the heartbeat (at most every ``HEARTBEAT_SECONDS``); call it from the driver's loop."""
        now = time.time()
        if self.run_id is not None and now - self.renewed >= HEARTBEAT_SECONDS:
            try:
                with quick_http_failures():
                    self.client.set_tag(self.run_id, "heartbeat", f"{now:.3f}")
                self.renewed = now
            except Exception:  # a tracking outage: results go on to results.jsonl; try again next tick
                pass

    def release(self) -> None:
        if self.run_id is not None:
            _RELEASED.add(self.run_id)  # not live even if the store is down and it stays listed
            self._delete(self.run_id)
            self.run_id = None

    def _delete(self, run_id: str) -> None:
        try:
            with quick_http_failures():
                self.client.set_terminated(run_id, "FINISHED")
                self.client.delete_run(run_id)
        except Exception:  # already deleted by a driver that found it expired, or the store is down:
            pass           # then the lease expires (its process is gone, its heartbeat stops)


class FileLease(DriverLease):
    """The ``--no-tracking`` lease: an exclusive ``flock`` on ``<results folder>/.driver.lock``."""

    def __init__(self, results_path: Path, name: str) -> None:
        self.path, self.name, self.handle = results_path.parent / ".driver.lock", name, None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            handle.close()
            raise GridBusy(f"grid {self.name!r} is being run by another driver ({_describe(holder)}; lock "
                           f"{self.path}); wait for it to end, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
