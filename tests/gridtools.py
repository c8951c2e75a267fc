"""Helpers shared by the tests: a tiny cell's overrides (``tiny_cell``), tiny grid specs and MLflow checks."""

from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from harness.config import config_hash
from harness.results import read_results
from harness.tracking.lease import LEASE_TAG


def tiny_cell(iters: int | None = None, measure: bool = False) -> list[str]:
    """The overrides of a tiny real cell: test_convnext, D=16, 32 px digits, data loaded in the
    process; ``iters`` training steps (the config's default when None); measured at 32 px in 2
    timed iterations when ``measure``, else not measured."""
    cell = ["model.backbone=test_convnext", "model.embed_dim=16", "data.num_workers=0", "data.image_size=32"]
    cell += [f"train.iters={iters}"] if iters is not None else []
    return cell + (["measure.image_size=32", "measure.iters=2", "measure.warmup=1"] if measure
                   else ["measure.enabled=false"])


TINY = {
    "backbones": ["test_convnext"],
    "model": {"embed_dim": 16},
    "data": {"num_workers": 0, "image_size": 32, "batch_size": 4, "eval_batch_size": 16},
    "train": {"iters": 20},
    "measure": {"image_size": 32, "iters": 2, "warmup": 1},
}


def write_spec(tmp_path, name, **fields):
    """A grid spec file: the tiny settings above, then ``fields``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TINY, **fields}))
    return path


def children(uri, name):
    """(child runs, parent runs) of experiment ``name`` (driver leases are neither)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return ([r for r in runs if "config_hash" in r.data.tags],
            [r for r in runs if "config_hash" not in r.data.tags and LEASE_TAG not in r.data.tags])


def assert_finished_once(uri, name, cells, results_path=None):
    """Each cell has exactly one FINISHED child run under the one parent run and, with
    ``results_path``, FINISHED lines in ``results.jsonl``: at most one from its training and at
    most one from its measurement (one line holding both when rebuilt from MLflow)."""
    runs, parents = children(uri, name)
    finished = [r.data.tags["config_hash"] for r in runs if r.info.status == "FINISHED"]
    expected = sorted(config_hash(c) for c in cells)
    assert sorted(finished) == expected
    assert len(parents) == 1 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs)
    if results_path is not None:  # a line when a cell trained, a second when it was measured
        lines = [r for r in _lines(results_path) if r["status"] == "FINISHED"]
        assert sorted({r["config_hash"] for r in lines}) == expected
        for measured in (False, True):
            recorded = [r["config_hash"] for r in lines if (r["measurement"] is not None) == measured]
            assert len(recorded) == len(set(recorded))
        assert set(read_results(results_path)) == set(expected)


def _lines(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def processes_titled(title: str) -> list[int]:
    """PIDs whose command line starts with ``title`` (Ray retitles a worker ``ray::<task>`` while
    it runs one, an actor ``ray::<class>``); the test session's own cluster is the only Ray here."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title.encode()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
