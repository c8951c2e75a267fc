"""Test-session settings: telemetry off, loopback only, a private dataset cache."""

import os
import tempfile

from gridtools import tiny_cell

# Set before anything imports Ray or MLflow.
for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ[_key] = _value
os.environ.setdefault("SEGHEADS_CACHE", tempfile.mkdtemp(prefix="segheads-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture
def folder_dataset(tmp_path):
    """A 4-image folder pair (jpg images, png labels with 3 classes and ignore pixels)."""
    rng = np.random.default_rng(0)
    image_root, gt_root = tmp_path / "images", tmp_path / "labels"
    image_root.mkdir()
    gt_root.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_root / f"img{i}.jpg")
        label = rng.integers(0, 3, (40, 48)).astype(np.uint8)
        label[:4] = 255
        Image.fromarray(label).save(gt_root / f"img{i}.png")
    return image_root, gt_root


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on loopback, shared by the grid tests and the fault suite: a head
    without task CPUs and node A (2 CPUs, 1 logical GPU); tests may add and remove nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def pytest_ignore_collect(collection_path, config):
    """Benchmarks run only when asked for by path (``python -m pytest tests/benchmarks``)."""
    if collection_path.name == "benchmarks" and collection_path.is_dir():
        return not any("benchmarks" in str(arg) for arg in config.args)
    return None


_TINY_CELL = tiny_cell(iters=10, measure=True)


@pytest.fixture(scope="session")
def logged_cells(tmp_path_factory):
    """Three real tiny cells, softmax (seeds 0 and 1) and query (seed 0), written to a
    results.jsonl and logged, with their weights, to MLflow experiment "checked" under one parent run:
    (folder, results.jsonl, tracking URI, results, parent run id)."""
    from mlflow.tracking import MlflowClient

    from harness import engine
    from harness.config import RunConfig, apply_overrides
    from harness.modeling import state_dict_bytes
    from harness.tracking import log_cell

    folder = tmp_path_factory.mktemp("cells")
    results, weights = [], []
    for classifier, seed in (("softmax", 0), ("softmax", 1), ("query", 0)):
        cfg = apply_overrides(RunConfig(), _TINY_CELL + [f"model.classifier={classifier}", f"train.seed={seed}",
                                                    f"output_dir={folder / 'outputs'}"])
        trained = engine.run(cfg)
        result, model = trained.result, trained.model()
        results.append(result)
        weights.append(state_dict_bytes(model))
    jsonl = folder / "results.jsonl"
    jsonl.write_text("".join(r.to_json(indent=None) + "\n" for r in results))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("checked"), tags={"mlflow.runName": "checked"}).info.run_id
    for result, state in zip(results, weights):
        log_cell(result, uri, "checked", parent, weights=state)
    client.set_terminated(parent)
    return folder, jsonl, uri, results, parent
