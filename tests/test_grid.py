"""Grids on a real two-node Ray cluster on loopback (logical GPUs) with a real MLflow SQLite store."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from harness.cli import main
from harness.config import config_hash
from harness.errors import InputError
from harness.grid import expand, load_grid, run_grid
from harness.gridstore import read_results

ROOT = Path(__file__).resolve().parents[1]
_TINY = {
    "backbones": ["test_convnext"],
    "model": {"embed_dim": 16},
    "data": {"num_workers": 0, "image_size": 32, "batch_size": 4, "eval_batch_size": 16},
    "train": {"iters": 20},
    "measure": {"image_size": 32, "iters": 2, "warmup": 1},
}


def _spec(tmp_path, name, **fields):
    data = {"name": name, **_TINY, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _children(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if "config_hash" in r.data.tags], [r for r in runs if "config_hash" not in r.data.tags]


def _finished_once(uri, name, cells):
    children, parents = _children(uri, name)
    finished = [r.data.tags["config_hash"] for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(config_hash(c) for c in cells)  # each cell exactly once
    assert len(parents) == 1 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs for tasks) + node A (2 CPUs, 1 logical GPU); tests may add and remove nodes."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_spec_expands_with_overrides_in_order(tmp_path):
    path = _spec(tmp_path, "expand", classifiers=["softmax", "protoseg"], seeds=[0, 1],
                 train={"iters": 20, "lr": 0.01}, backbone_overrides={"test_convnext": {"train": {"lr": 0.02}}},
                 classifier_overrides={"protoseg": {"model": {"classifier_kwargs": {"num_prototypes": 3}}}},
                 resources={"cpus": 2})
    cells = expand(load_grid(path))
    assert [(c.model.classifier, c.train.seed) for c in cells] == [
        ("softmax", 0), ("softmax", 1), ("protoseg", 0), ("protoseg", 1)]
    assert all(c.train.lr == 0.02 and c.train.threads == 2 and c.experiment == "expand" for c in cells)
    assert cells[2].model.classifier_kwargs == {"num_prototypes": 3} and cells[0].model.classifier_kwargs == {}
    assert len({config_hash(c) for c in cells}) == 4
    assert [config_hash(c) for c in cells] == [config_hash(c) for c in expand(load_grid(path))]


@pytest.mark.parametrize("fields, message", [
    ({"classifiers": []}, "classifiers: empty axis"),
    ({"classifiers": ["softmax"], "trian": {}}, "unknown key 'trian'; allowed keys here: name, backbones"),
    ({"classifiers": ["softmax"], "train": {"lr": "fast"}}, "train.lr: expected float, got 'fast'"),
    ({"classifiers": ["softmax"], "classifier_overrides": {"ece": {}}}, "classifier_overrides: ece not on the grid's axis"),
    ({"classifiers": ["softmax"], "resources": {"gpus": "half"}}, "resources.gpus: expected float"),
])
def test_bad_specs_name_the_key(tmp_path, fields, message):
    with pytest.raises(InputError, match=message):
        expand(load_grid(_spec(tmp_path, "bad", **fields)))


def test_dry_run_lists_cells_and_resources_and_rejects_unknown_names(tmp_path, capsys):
    path = _spec(tmp_path, "dry", classifiers=["softmax", "ssa"], resources={"gpus": 0.5, "measure_gpus": 1})
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells; per cell 1 CPU, 0.5 GPU (training), 1 CPU, 1 GPU (measurement)" in out
    assert "softmax@test_convnext/mlp digits_sem_seg s0" in out and "ssa@test_convnext/mlp" in out
    assert main(["grid", str(_spec(tmp_path, "dry2", classifiers=["softmaxx"])), "--dry-run"]) == 2
    assert "unknown classifier 'softmaxx'" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_half_gpu_cells_pack_two_per_gpu_and_a_failing_cell_does_not_stop_the_grid(cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _spec(tmp_path, "pack", classifiers=["softmax", "query", "protoseg", "ssa"],
                 train={"iters": 40}, resources={"cpus": 1, "gpus": 0.5},
                 classifier_overrides={"protoseg": {"train": {"lr": 1.0e+30}}})
    outcome = run_grid(load_grid(path), uri, results_path=tmp_path / "results.jsonl", log=lambda m: None)
    by_classifier = {r["tags"]["classifier"]: r for r in outcome.results}
    failed = by_classifier.pop("protoseg")
    assert failed["status"] == "FAILED" and "non-finite loss at iteration" in failed["error"]
    assert failed["failed_at_iteration"] >= 1 and "NonFiniteLossError" in failed["traceback"]
    assert all(r["status"] == "FINISHED" and "latency/bs1/p50_ms" in r["metrics"] for r in by_classifier.values())
    placements = [r["environment"]["ray"] for r in outcome.results]
    assert {tuple(p["gpu_ids"]) for p in placements} == {("0",)}  # every cell on the one GPU
    events = sorted([(p["started"], 1) for p in placements] + [(p["ended"], -1) for p in placements])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2  # two 0.5-GPU cells at once, never more
    children, _ = _children(uri, "pack")
    statuses = sorted((r.data.tags["classifier"], r.info.status) for r in children)
    assert statuses == [("protoseg", "FAILED"), ("query", "FINISHED"), ("softmax", "FINISHED"), ("ssa", "FINISHED")]
    assert "non-finite loss" in next(r for r in children if r.info.status == "FAILED").data.tags["error"]
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in lines) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]


def test_rerun_skips_finished_cells_and_adds_new_ones(cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    first = load_grid(_spec(tmp_path, "grow", classifiers=["softmax"]))
    assert run_grid(first, uri, results_path=results, log=lambda m: None).ran == 1
    grown = load_grid(_spec(tmp_path, "grow", classifiers=["softmax", "query"]))
    outcome = run_grid(grown, uri, results_path=results, log=lambda m: None)
    assert outcome.ran == 1 and [r["status"] for r in outcome.results] == ["FINISHED", "FINISHED"]
    _finished_once(uri, "grow", expand(grown))
    assert len(results.read_text().splitlines()) == 2
    assert run_grid(grown, uri, results_path=results, log=lambda m: None).ran == 0
    # the report of this real grid: one row per cell, the delta over softmax, plots
    assert main(["report", "--parent", outcome.parent_run_id, "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    rows = {r["classifier"]: r for r in csv.DictReader(open(tmp_path / "r" / "results.csv"))}
    miou = {r["tags"]["classifier"]: r["metrics"]["mIoU"] for r in outcome.results}
    assert sorted(rows) == ["query", "softmax"]
    assert float(rows["query"]["delta_vs_softmax"]) == pytest.approx(miou["query"] - miou["softmax"])
    assert rows["query"]["delta_ci_low"] != "" and (tmp_path / "r" / "miou_vs_latency.png").stat().st_size > 2000


def test_driver_killed_after_some_cells_then_rerun_ends_with_one_finished_run_per_cell(cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = _spec(tmp_path, "killed", classifiers=["softmax", "query", "protoseg", "ssa"], train={"iters": 60})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness", "grid", str(path), "--tracking-uri", uri, "--results", str(results),
         "--max-concurrent", "1"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.time() + 300
    def finished_lines():
        return sum(r["status"] == "FINISHED" for r in read_results(results).values())

    while time.time() < deadline and driver.poll() is None and finished_lines() < 1:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    killed_after = finished_lines()
    assert 1 <= killed_after < 4
    spec = load_grid(path)
    outcome = run_grid(spec, uri, results_path=results, log=lambda m: None)
    assert outcome.ran == 4 - killed_after
    _finished_once(uri, "killed", expand(spec))
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert sorted(r["config_hash"] for r in lines if r["status"] == "FINISHED") == sorted(
        config_hash(c) for c in expand(spec))


def test_a_node_lost_mid_grid_loses_no_cell(cluster, tmp_path):
    doomed = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(_spec(tmp_path, "lost", classifiers=["softmax", "query", "protoseg", "ssa"],
                           train={"iters": 150}))
    box = {}
    driver = threading.Thread(target=lambda: box.update(outcome=run_grid(spec, uri, results_path=results,
                                                                         log=lambda m: None)))
    driver.start()
    deadline = time.time() + 120
    while time.time() < deadline and ray.available_resources().get("CPU", 0) > 0:  # all 4 CPUs busy
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 0
    cluster.remove_node(doomed, allow_graceful=False)
    driver.join(timeout=600)
    outcome = box["outcome"]
    assert [r["status"] for r in outcome.results] == ["FINISHED"] * 4
    assert all(r["environment"]["ray"]["node_id"] != doomed.node_id for r in outcome.results)
    _finished_once(uri, "lost", expand(spec))
