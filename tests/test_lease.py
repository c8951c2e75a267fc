"""The one-driver-per-grid lease (``harness.tracking.lease``) on a real MLflow SQLite store and a real
lock file: a live holder is named and refused, a dead or silent one is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from harness.grid.store import GridStore
from harness.tracking.lease import EXPIRY_SECONDS, LEASE_TAG, FileLease, GridBusy


def _store(tmp_path, name="leased"):
    return GridStore(name, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl")


def _foreign_lease(store, **tags):
    """A lease run as another driver would leave it."""
    now = time.time()
    base = {LEASE_TAG: store.name, "state": "held", "host": "gpu-node-7", "pid": "4242", "started": f"{now - 60:.3f}",
            "heartbeat": f"{now:.3f}"}
    return store.tracking.client.create_run(store.tracking.experiment_id, tags={**base, **tags}).info.run_id


def _live_leases(store):
    return store.tracking.client.search_runs([store.tracking.experiment_id], f"tags.`{LEASE_TAG}` = '{store.name}'")


def test_a_live_driver_on_another_host_is_named_and_the_second_is_refused(tmp_path):
    store = _store(tmp_path)
    _foreign_lease(store)
    with pytest.raises(GridBusy, match=r"another driver \(process 4242 on host gpu-node-7, started \d{4}-\d\d-\d\d "):
        store.lease().acquire()
    assert len(_live_leases(store)) == 1  # the refused driver withdrew its own lease


def test_a_silent_or_dead_driver_s_lease_expires_and_the_next_driver_takes_over(tmp_path):
    store = _store(tmp_path)
    silent = _foreign_lease(store, heartbeat=f"{time.time() - EXPIRY_SECONDS - 1:.3f}")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = _foreign_lease(store, host=socket.gethostname(), pid=finished.stdout.strip())
    lease = store.lease()
    lease.acquire()
    live = _live_leases(store)
    assert [run.info.run_id for run in live] == [lease.run_id] and {silent, dead}.isdisjoint({lease.run_id})
    with pytest.raises(GridBusy, match=f"process {os.getpid()} on host"):
        _store(tmp_path).lease().acquire()  # this live process now holds it
    lease.release()
    assert _live_leases(store) == []
    second = store.lease()
    second.acquire()
    second.release()


def test_without_tracking_the_lock_file_refuses_a_second_driver_until_the_first_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from harness.tracking.lease import FileLease\n"
        f"lease = FileLease(Path({str(tmp_path / 'results.jsonl')!r}), 'offline'); lease.acquire(); "
        "print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GridBusy, match=rf"process {holder.pid} on host .* lock {tmp_path / '.driver.lock'}"):
            FileLease(tmp_path / "results.jsonl", "offline").acquire()
    finally:
        holder.kill()
        holder.wait()
    lease = FileLease(tmp_path / "results.jsonl", "offline")
    lease.acquire()  # the kernel released the dead holder's lock
    assert json.loads((tmp_path / ".driver.lock").read_text())["pid"] == str(os.getpid())
    lease.release()
