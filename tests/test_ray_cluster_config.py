"""``ray_cluster.yaml`` passes the validation ``ray up`` applies, offline, and holds the paper specs' cells."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from harness.grid import load_grid
from harness.grid.schedule import _TRIAL_DRIVER_MEMORY

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def _config():
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_config_is_valid_for_ray_up():
    prepared = prepare_config(_config())
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert any("pip install -q -e ~/segheads" in c for c in prepared["setup_commands"])
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard is not exposed


def test_validation_catches_a_broken_config():
    broken = copy.deepcopy(_config())
    broken["available_node_types"]["gpu1_worker"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def _fits(demand: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in demand.items())


@pytest.mark.parametrize("spec_path", sorted((CONFIG.parent / "jobs" / "papers").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_paper_cell_and_its_measurement_fit_a_node_type_of_the_shipped_cluster(spec_path):
    """A cell's training (its Ray Tune trial and all ``resources.workers`` workers, on one node as the
    papers ran them) and its measurement each fit the declared resources of some node type, with
    a tenth more CPUs and memory to spare (the data loaders' processes, which the cap leaves out)."""
    r = load_grid(spec_path).resources
    gib = 2**30
    trial = _TRIAL_DRIVER_MEMORY if r.workers > 1 else 0  # a trial that drives a Ray Train run
    training = {"CPU": r.workers * r.cpus, "GPU": r.workers * r.gpus, "memory": r.workers * r.memory_gb * gib + trial}
    measurement = {"CPU": r.measure_cpus, "GPU": r.measure_gpus, "memory": r.memory_gb * gib}
    nodes = {name: node["resources"] for name, node in _config()["available_node_types"].items()}
    headroom = {k: v * (1.1 if k in ("CPU", "memory") else 1) for k, v in training.items()}
    assert any(_fits(headroom, node) for node in nodes.values()), (spec_path.name, training, nodes)
    assert any(_fits(measurement, node) for node in nodes.values()), (spec_path.name, measurement, nodes)
    assert not _fits({"CPU": r.cpus}, nodes["head"])  # no training worker runs on the head


def test_a_cell_that_no_node_type_holds_is_caught():
    nodes = [node["resources"] for node in _config()["available_node_types"].values()]
    assert not any(_fits({"CPU": 8 * 7, "GPU": 8, "memory": 8 * 200 * 2**30}, node) for node in nodes)
