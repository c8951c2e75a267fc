"""The tracking store unreachable: before a grid (refused in seconds, nothing run), dying
mid-grid (results.jsonl keeps every cell; ``segheads import-results`` logs them once the
store is back) and ``--no-tracking``. A real MLflow server on 127.0.0.1 and SQLite stores."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from gridtools import assert_finished_once, children, write_spec
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.grid import expand, load_grid
from harness.grid.store import GridStore
from harness.results import read_results

_REFERENCE = str(Path(__file__).resolve().parents[2] / "jobs" / "reference" / "quickstart.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "art")],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"OK":
                return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError("the MLflow server did not come up")


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_unreachable_store_is_refused_before_the_grid_starts(tmp_path, capsys):
    path = write_spec(tmp_path, "nostore", classifiers=["softmax"])
    results = tmp_path / "results.jsonl"
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "corrupt.db").write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    for uri, named in ((f"http://127.0.0.1:{_free_port()}", "http://127.0.0.1:"),
                       (f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", str(tmp_path / "a-file" / "mlflow.db")),
                       (f"sqlite:///{tmp_path / 'corrupt.db'}", str(tmp_path / "corrupt.db"))):
        began = time.time()
        assert main(["grid", str(path), "--tracking-uri", uri, "--results", str(results)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"segheads: error: tracking store {named}") and "--no-tracking" in err
        assert len(err.splitlines()) == 1 and time.time() - began < 60
        assert not results.exists()
        for command in (["report", "--experiment", "nostore"], ["check", _REFERENCE, "--experiment", "nostore"]):
            assert main([*command, "--tracking-uri", uri]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"tracking store {named}" in err


def test_store_lost_mid_grid_then_import_results_logs_every_cell_once(ray_cluster, tmp_path, capsys):
    port, results = _free_port(), tmp_path / "results.jsonl"
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    path = write_spec(tmp_path, "outage", classifiers=["softmax", "query", "ssa"], train={"iters": 40})

    def kill_after_first_line():
        deadline = time.time() + 300
        while time.time() < deadline and not read_results(results):
            time.sleep(0.1)
        _stop(server)

    watcher = threading.Thread(target=kill_after_first_line)
    watcher.start()
    try:
        status = main(["grid", str(path), "--tracking-uri", uri, "--results", str(results), "--max-concurrent", "1"])
    finally:
        watcher.join()
    err = capsys.readouterr().err
    assert status == 1 and f"tracking store {uri} failed" in err
    assert f"only in {results}; log them with `segheads import-results {results}`" in err
    cells = expand(load_grid(path))
    assert sorted(r.status for r in read_results(results).values()) == ["FINISHED"] * 3  # nothing lost

    server = _start_server(tmp_path, port)  # the store is back, same database
    try:
        assert main(["import-results", str(results), "--tracking-uri", uri]) == 0
        assert "imported" in capsys.readouterr().out
        assert_finished_once(uri, "outage", cells, results)
        assert main(["import-results", str(results), "--tracking-uri", uri]) == 0
        assert capsys.readouterr().out.startswith("imported 0 of 3")  # idempotent
        assert_finished_once(uri, "outage", cells, results)
    finally:
        _stop(server)


def test_no_tracking_grid_then_import(ray_cluster, tmp_path, capsys):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = write_spec(tmp_path, "offline", classifiers=["softmax", "query"])
    assert main(["grid", str(path), "--no-tracking", "--results", str(results), "--tracking-uri", uri]) == 1
    assert "2 result(s) are only in" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    assert main(["grid", str(path), "--no-tracking", "--results", str(results)]) == 0  # finished cells skipped
    capsys.readouterr()
    driver = GridStore("offline", uri, results).lease()
    driver.acquire()  # a driver is running this grid: import-results must not repair under it
    try:
        assert main(["import-results", str(results), "--tracking-uri", uri]) == 2
        assert f"process {os.getpid()}" in capsys.readouterr().err
    finally:
        driver.release()
    assert main(["import-results", str(results), "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.startswith("imported 2 of 2 cell result(s) into experiment 'offline'")
    assert_finished_once(uri, "offline", expand(load_grid(path)), results)
    for run in children(uri, "offline")[0]:  # the weights the offline grid kept, logged with the cells
        kept = (tmp_path / "weights" / f"{run.data.tags['config_hash']}.pt").read_bytes()
        logged = MlflowClient(uri).download_artifacts(run.info.run_id, "weights.pt", str(tmp_path / run.info.run_id))
        assert Path(logged).read_bytes() == kept
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 4  # each cell trained, then measured; the import added none
