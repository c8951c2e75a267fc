"""``ray_cluster.yaml`` passes the validation ``ray up`` applies, offline."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
