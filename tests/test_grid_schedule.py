"""A grid on a cluster that changes under it (Ray Tune schedules the cells), each cell live in MLflow
from its first rows, and recorded as soon as it has trained. Real Ray (a cluster of its own that
the test grows, or a local one whose driver the test kills), real MLflow SQLite stores read by
another process while the driver writes them."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from gridtools import TINY, children, processes_titled, write_spec
from mlflow.tracking import MlflowClient
from PIL import Image
from ray.cluster_utils import Cluster

from harness.config import config_hash
from harness.engine import checkpoint
from harness.grid import expand, load_grid, run_grid
from harness.results import read_results

TRIAL_PROCESS = "ray::ImplicitFunc"  # a Ray Tune function trial's actor


def _wait(condition, what: str, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ade20k(root) -> None:
    """A few images in ADE20K's layout under ``root`` (``prepare-data``'s, detectron2's names)."""
    rng = np.random.default_rng(0)
    for folder in ("training", "validation"):
        images, labels = root / "images" / folder, root / "annotations_detectron2" / folder
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"ADE_{index}.jpg")
            Image.fromarray(rng.integers(0, 150, (40, 48), dtype=np.uint8)).save(labels / f"ADE_{index}.png")


def _overlap(placements: list[dict]) -> int:
    """The most of these time intervals that were open at once."""
    events = sorted([(p["started"], 1) for p in placements] + [(p["ended"], -1) for p in placements])
    return max(sum(step for _, step in events[: i + 1]) for i in range(len(events)))


def test_cells_start_as_nodes_join_on_a_head_without_cpus_or_the_dataset(tmp_path):
    """The head has no CPU and no dataset folder; the grid starts, then two 1-CPU nodes that have
    the dataset join one after the other: a cell starts on the first, the other on the second
    while the first still trains."""
    data, empty = tmp_path / "datasets", tmp_path / "no-datasets"
    _ade20k(data / "ADEChallengeData2016")
    empty.mkdir()
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = write_spec(tmp_path, "joins", datasets=["ade20k_sem_seg"], classifiers=["softmax", "query"],
                      data={**TINY["data"], "image_size": 64, "batch_size": 8}, train={"iters": 300},
                      measure={"enabled": False})
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["DETECTRON2_DATASETS"] = str(empty)  # the driver's node has no ADE20K
        driver = subprocess.Popen(
            [sys.executable, "-m", "harness", "grid", str(path), "--address", cluster.address, "--tracking-uri", uri,
             "--results", str(results)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        _wait(lambda: driver.poll() is not None or _experiment_has_parent(uri, "joins"), "the grid to start")
        assert driver.poll() is None, driver.stderr.read()
        node_env = {"DETECTRON2_DATASETS": str(data)}
        first = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=node_env)
        _wait(lambda: driver.poll() is not None or _running(uri, "joins") == 1, "a cell on the first node")
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=node_env)
        joined = time.time()
        _, errors = driver.communicate(timeout=600)
        assert driver.returncode == 0, errors
    finally:
        cluster.shutdown()
    cells = read_results(results)
    assert [r.status for r in cells.values()] == ["FINISHED"] * 2
    placements = [r.environment["ray"] for r in cells.values()]
    assert {p["node_id"] for p in placements} == {first.node_id, second.node_id}
    assert _overlap(placements) == 2
    assert any(p["node_id"] == second.node_id and p["started"] >= joined for p in placements)


def _experiment_has_parent(uri: str, name: str) -> bool:
    try:
        return bool(children(uri, name)[1])
    except AttributeError:  # no experiment yet
        return False


def _running(uri: str, name: str) -> int:
    try:
        return sum(run.info.status == "RUNNING" for run in children(uri, name)[0])
    except AttributeError:
        return 0


_READER = """
import json, sys, time
from mlflow.tracking import MlflowClient
uri, name, classifier = sys.argv[1:]
client = MlflowClient(uri)
while True:
    found = client.get_experiment_by_name(name)
    for run in client.search_runs([found.experiment_id], f"tags.classifier = '{classifier}'") if found else []:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
        if run.info.status == "RUNNING" and len(steps) >= 3:
            print(json.dumps({"run_id": run.info.run_id, "steps": steps}), flush=True)
            sys.exit(0)
    time.sleep(0.5)
"""


def test_a_cell_is_live_in_mlflow_and_a_killed_driver_loses_neither_its_rows_nor_a_trained_cell(ray_cluster,
                                                                                                  tmp_path):
    """softmax trains 20 iterations and waits to be measured while query trains 300 on the node's
    other CPU. Another process sees query's run RUNNING with its rows as ``loss/total`` steps; the
    driver is killed with softmax trained, unmeasured, and query past a checkpoint. The store
    holds softmax FINISHED with its weights and mIoU; the re-run measures it without training it
    and continues query in the same run, its steps going on from the checkpoint's iteration."""
    uri, results, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl", tmp_path / "checkpoints"
    path = write_spec(tmp_path, "live", classifiers=["softmax", "query"],
                      data={**TINY["data"], "image_size": 64, "batch_size": 8},
                      train={"iters": 300, "log_period": 10, "checkpoint_period": 100},
                      classifier_overrides={"softmax": {"train": {"iters": 20}}})
    spec = load_grid(path)
    softmax, query = (config_hash(cfg) for cfg in expand(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness", "grid", str(path), "--tracking-uri", uri, "--results", str(results)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    reader = subprocess.run([sys.executable, "-c", _READER, uri, "live", "query"], capture_output=True, text=True,
                            timeout=300)
    seen = json.loads(reader.stdout)
    assert seen["steps"][:3] == [10, 20, 30]

    def trained_and_checkpointed() -> bool:
        line = read_results(results).get(softmax)
        return (line is not None and line.measurement is None
                and (storage / query / checkpoint.folder_name(100)).is_dir())

    _wait(lambda: driver.poll() is not None or trained_and_checkpointed(), "softmax trained and query checkpointed")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    _wait(lambda: not processes_titled(TRIAL_PROCESS), "the killed driver's trials to stop", 60)
    assert query not in read_results(results)  # not recorded: it was training
    client = MlflowClient(uri)
    runs = {r.data.tags["config_hash"]: r for r in children(uri, "live")[0]}
    kept = runs[softmax]
    assert kept.info.status == "FINISHED" and "mIoU" in kept.data.metrics
    assert not any(key.startswith("latency/") for key in kept.data.metrics)
    assert "weights.pt" in {a.path for a in client.list_artifacts(kept.info.run_id)}
    resumed_from = int(checkpoint.latest(storage / query).name.removeprefix(checkpoint.PREFIX))

    outcome = run_grid(spec, uri, results_path=results)
    assert outcome.ran_hashes == [query]  # softmax: measured, not trained again
    by_hash = {r.config_hash: r for r in outcome.results}
    assert by_hash[softmax].measurement is not None
    assert by_hash[softmax].metrics["train/seconds"] == kept.data.metrics["train/seconds"]
    assert by_hash[query].environment["engine"]["resumed_at"] == resumed_from >= 100
    after = {r.data.tags["config_hash"]: r for r in children(uri, "live")[0]}
    assert len(after) == 2 and after[softmax].info.run_id == kept.info.run_id
    assert after[query].info.run_id == seen["run_id"] and after[query].info.status == "FINISHED"
    assert "latency/bs1/p50_ms" in after[softmax].data.metrics
    steps = {m.step for m in client.get_metric_history(seen["run_id"], "loss/total")}
    assert steps == set(range(10, 301, 10))  # before the kill, and on from the checkpoint after it
