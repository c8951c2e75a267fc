"""Lost processes during a grid: the driver killed, a worker killed, a node lost. Real Ray
(``ray_cluster``: loopback, logical GPU) and a real MLflow SQLite store; nothing is lost
and nothing is counted twice."""

import os
import signal
import subprocess
import sys
import threading
import time

import ray
from gridtools import assert_finished_once, children, processes_titled, write_spec

from harness.engine import checkpoint
from harness.grid import expand, load_grid, run_grid
from harness.results import read_results

_FOUR = ["softmax", "query", "protoseg", "ssa"]
TRIAL_PROCESS = "ray::ImplicitFunc"  # a Ray Tune function trial's actor


def test_driver_killed_after_some_cells_then_rerun_ends_with_one_finished_run_per_cell(ray_cluster, tmp_path):
    """The re-run resumes each cell that had a checkpoint from it (the newest, here at iteration
    20 or 40 of 60), and records every cell exactly once."""
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    storage = tmp_path / "checkpoints"  # the default: beside the results
    path = write_spec(tmp_path, "killed", classifiers=_FOUR, train={"iters": 60, "checkpoint_period": 20})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness", "grid", str(path), "--tracking-uri", uri, "--results", str(results),
         "--max-concurrent", "1"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.time() + 300

    def finished():
        return {h for h, r in read_results(results).items() if r.status == "FINISHED"}

    def checkpointed():
        """config_hash -> iteration of the newest checkpoint, of the cells not recorded yet."""
        runs = storage.iterdir() if storage.is_dir() else []
        return {run.name: int(newest.name.removeprefix(checkpoint.PREFIX)) for run in runs
                if run.name not in finished() and (newest := checkpoint.latest(run)) is not None}

    while time.time() < deadline and driver.poll() is None and not (finished() and checkpointed()):
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    orphans = time.time() + 60  # a worker notices its raylet is gone within seconds; until then it trains on
    while time.time() < orphans and processes_titled(TRIAL_PROCESS):
        time.sleep(0.2)
    killed_after, waiting = len(finished()), checkpointed()
    assert 1 <= killed_after < 4 and waiting
    spec = load_grid(path)
    outcome = run_grid(spec, uri, results_path=results)
    assert outcome.ran == 4 - killed_after
    resumed = {r.config_hash: r.environment["engine"]["resumed_at"] for r in outcome.results}
    assert {digest: resumed[digest] for digest in waiting} == waiting
    assert all(iteration in (20, 40, 60) for iteration in waiting.values())
    assert_finished_once(uri, "killed", expand(spec), results)
    runs, _ = children(uri, "killed")
    assert len(runs) == 4  # a cell the killed driver left RUNNING went on in the same run
    assert all(r.measurement is not None for r in outcome.results)  # trained before the kill, measured after


def test_a_worker_killed_mid_cell_is_retried(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "worker", classifiers=["softmax", "query"], train={"iters": 150}))
    box = {}
    driver = threading.Thread(target=lambda: box.update(outcome=run_grid(spec, uri, results_path=results)))
    driver.start()
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and killed is None:
        running = processes_titled(TRIAL_PROCESS)
        if running:
            killed = running[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    driver.join(timeout=600)
    assert killed is not None
    outcome = box["outcome"]
    assert [r.status for r in outcome.results] == ["FINISHED"] * 2
    assert killed not in {r.environment["ray"]["worker_pid"] for r in outcome.results}
    assert_finished_once(uri, "worker", expand(spec), results)


def test_a_node_lost_mid_grid_loses_no_cell(ray_cluster, tmp_path):
    doomed = ray_cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "lost", classifiers=_FOUR, train={"iters": 150}))
    box = {}
    driver = threading.Thread(target=lambda: box.update(outcome=run_grid(spec, uri, results_path=results)))
    driver.start()
    deadline = time.time() + 120
    while time.time() < deadline and ray.available_resources().get("CPU", 0) > 0:  # all 4 CPUs busy
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 0
    ray_cluster.remove_node(doomed, allow_graceful=False)
    driver.join(timeout=600)
    outcome = box["outcome"]
    assert [r.status for r in outcome.results] == ["FINISHED"] * 4
    assert all(r.environment["ray"]["node_id"] != doomed.node_id for r in outcome.results)
    assert_finished_once(uri, "lost", expand(spec), results)


def test_a_lost_results_file_is_rebuilt_from_mlflow_without_rerunning(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "rebuilt", classifiers=["softmax", "query"]))
    first = {r.config_hash: r for r in run_grid(spec, uri, results_path=results).results}
    results.unlink()
    again = run_grid(spec, uri, results_path=results)
    assert again.ran == 0
    rebuilt = read_results(results)
    assert set(rebuilt) == set(first)
    for digest, result in rebuilt.items():
        assert result.metrics["mIoU"] == first[digest].metrics["mIoU"]
        assert result.per_image == first[digest].per_image
    assert_finished_once(uri, "rebuilt", expand(spec), results)


def test_two_drivers_started_at_once_on_one_spec_run_each_cell_once(tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = write_spec(tmp_path, "twice", classifiers=["softmax", "query"])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each its own local Ray, as a user's would be
    command = [sys.executable, "-m", "harness", "grid", str(path), "--tracking-uri", uri, "--results", str(results)]
    drivers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True) for _ in range(2)]
    outcomes = sorted((d.wait(timeout=600), d.stderr.read(), d.pid) for d in drivers)
    (ran, _, winner), (refused, message, _) = outcomes
    assert (ran, refused) == (0, 2)
    assert message.strip().startswith("segheads: error: grid 'twice' is being run by another driver (process "
                                      f"{winner} on host ") and len(message.strip().splitlines()) == 1
    assert_finished_once(uri, "twice", expand(load_grid(path)), results)
    assert len(results.read_text().splitlines()) == 4  # each cell trained, then measured, once
