"""What a grid runs on the cluster: each cell as a Ray Tune trial (``train_trial``) that trains and
evaluates it, and its cost measurement (``measure_task``). Both hand their results to the driver
(a trial through ``ray.tune.report``, a measurement as its return value); neither writes MLflow.

A trial's reports: ``{"iteration", "rows"}`` while it trains (the engine's ``MetricsHook`` and
``EvalHook`` rows, from the one process or, in a Ray Train run, rank 0 through Tune's
``TuneReportCallback``), then one last report: ``{"cell_trained": True}`` (the CellResult and weights
are in the cell's final checkpoint under the grid's storage, ``engine.trained_cell``) or
``{"cell_failed": CellResult}``, each with ``placement`` and ``seconds``. The engine runs the cell
(``engine.run``): where, its failures, its restarts.
"""

from __future__ import annotations

import os
import time

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from harness import engine
from harness.config import RunConfig, from_dict
from harness.errors import one_line
from harness.grid.spec import Resources
from harness.measure import measure_model
from harness.modeling import load_segmentor

REPORT_TRAINED = "cell_trained"  # a trial's last report: the cell trained, its result is in its final checkpoint
REPORT_FAILED = "cell_failed"    # a trial's last report: the cell failed, this is its CellResult


def placement(started: float) -> dict:
    """Where and when this task ran: node, process, GPUs, start and end times."""
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "worker_pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started": started, "ended": time.time()}


class TuneReporter(engine.Reporter):
    """A cell's reports handed to its Tune trial: from this process, or from its Ray Train run's controller."""

    def __call__(self, metrics: dict) -> None:
        tune.report(metrics)

    def train_callbacks(self) -> tuple:
        return (TuneReportCallback(),)


def train_trial(config: dict) -> None:
    """Ray Tune's function trainable for one cell: ``config`` holds ``cell`` (a RunConfig as a dict),
    ``resources`` (the spec's ``Resources``) and ``storage``. ``engine.run`` trains it, resuming
    from its newest checkpoint under ``storage``; an exception in the cell is its FAILED result,
    not retried; a lost trial process or node is a trial failure Tune retries (``FailureConfig``)."""
    started = time.time()
    cfg, resources = from_dict(RunConfig, config["cell"]), from_dict(Resources, config["resources"])
    try:
        engine.run(cfg, resources.cell(), config["storage"], resume=True, reporter=TuneReporter(), measure=False)
        outcome = {REPORT_TRAINED: True}
    except Exception as exc:  # the cell fails, the grid goes on
        outcome = {REPORT_FAILED: engine.failed_result(cfg, exc).to_dict()}
    tune.report({**outcome, "placement": placement(started), "seconds": time.time() - started})


def measure_task(cfg_dict: dict, weights: bytes, threads: int, reserved: dict, memory_gb: float = 0) -> dict:
    """Measure a trained cell's cost, holding ``reserved`` of its node (a whole node's CPUs and
    GPUs when one fits): {"metrics", "record", "seconds"}, or {"error", "seconds"}. The record's
    ``node`` says where it ran, what it held and whether that was the whole node (``exclusive``)."""
    started = time.time()
    try:
        cfg = from_dict(RunConfig, cfg_dict)
        device = engine.resolve_device(cfg.device)
        model = load_segmentor(cfg, weights)
        with engine.memory_cap(memory_gb, "measurement"):
            metrics, record = measure_model(model.to(device), cfg.measure, device, threads)
        where = placement(started)
        total = next(node["Resources"] for node in ray.nodes() if node["NodeID"] == where["node_id"])
        exclusive = all(reserved.get(k, 0) >= total.get(k, 0) for k in ("CPU", "GPU"))
        record["node"] = {"exclusive": exclusive, "reserved": reserved, **where}
        return {"metrics": metrics, "record": record, "seconds": time.time() - started}
    except Exception as exc:
        return {"error": one_line(exc), "seconds": time.time() - started}
