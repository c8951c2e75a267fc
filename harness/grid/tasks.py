"""What a grid runs on the cluster: each cell as a Ray Tune trial (``train_trial``) that trains and
evaluates it, and its cost measurement (``measure_task``). Both hand their results to the driver
(a trial through ``ray.tune.report``, a measurement as its return value); neither writes MLflow.

A trial's reports: ``{"iteration", "rows"}`` while it trains (the engine's ``MetricsHook`` and
``EvalHook`` rows, from the one process or, in a Ray Train run, rank 0 through Tune's
``TuneReportCallback``), then one last report: ``{"cell_trained": True}`` (the CellResult and weights
are in the cell's final checkpoint under the grid's storage, ``launch.final_checkpoint``) or
``{"cell_failed": CellResult}``, each with ``placement`` and ``seconds``.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from harness.config import RunConfig, config_hash, from_dict, to_dict
from harness.engine import LocalContext, cell_tags, resolve_device, train_cell
from harness.engine.launch import CELL_ERRORS, launch, memory_cap, needs_ray_train
from harness.errors import one_line
from harness.grid.spec import Resources
from harness.measure import measure_model
from harness.modeling import load_segmentor
from harness.results import FAILED, CellResult

REPORT_TRAINED = "cell_trained"  # a trial's last report: the cell trained, its result is in its final checkpoint
REPORT_FAILED = "cell_failed"    # a trial's last report: the cell failed, this is its CellResult


def placement(started: float) -> dict:
    """Where and when this task ran: node, process, GPUs, start and end times."""
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "worker_pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started": started, "ended": time.time()}


def failed_result(cfg: RunConfig, exc: BaseException, remote_traceback: str | None = None) -> CellResult:
    """A CellResult for a cell that raised: status FAILED, the error, its traceback and,
    for a non-finite loss, the iteration it happened at."""
    return CellResult(
        FAILED, to_dict(cfg), config_hash(cfg), cell_tags(cfg),
        error=getattr(exc, "error", None) or one_line(exc),  # a Ray Train worker's error (CellFailed)
        traceback=(getattr(exc, "remote_traceback", None) or remote_traceback
                   or "".join(traceback.format_exception(exc))),
        failed_at_iteration=getattr(exc, "iteration", None))


class TrialContext(LocalContext):
    """A one-worker cell inside a Tune trial: checkpoints as ``LocalContext`` writes them, every
    report also handed to Tune (so the driver sees the rows as they come)."""

    def report(self, metrics: dict, folder: Path | None = None, name: str | None = None) -> None:
        super().report(metrics, folder, name)
        tune.report(metrics)


def train_trial(config: dict) -> None:
    """Ray Tune's function trainable for one cell: ``config`` holds ``cell`` (a RunConfig as a dict),
    ``resources`` (the spec's ``Resources``) and ``storage``. One worker on a path trains in this
    trial's process, resuming from the cell's newest checkpoint under ``storage``/<config_hash>;
    otherwise the trial drives the cell's Ray Train run (``launch``), which resumes by itself. An
    exception in the cell is its FAILED result, not retried; a lost trial process or node is a
    trial failure Tune retries (``FailureConfig``)."""
    started = time.time()
    cfg, resources, storage = from_dict(RunConfig, config["cell"]), from_dict(Resources, config["resources"]), \
        config["storage"]
    try:
        if needs_ray_train(resources.workers, storage):
            launch(train_cell, cfg, resources.workers, storage, resources.cpus, resources.gpus, resources.memory_gb,
                   resources.retries, callbacks=(TuneReportCallback(),))
        else:
            run = Path(storage) / config_hash(cfg)
            try:
                with memory_cap(resources.memory_gb):
                    train_cell(cfg, TrialContext(resolve_device(cfg.device), run, resume=True), log=lambda msg: None)
            except CELL_ERRORS:
                shutil.rmtree(run, ignore_errors=True)  # as Ray Train's path: a failed cell run again starts over
                raise
        outcome = {REPORT_TRAINED: True}
    except Exception as exc:  # the cell fails, the grid goes on
        outcome = {REPORT_FAILED: failed_result(cfg, exc).to_dict()}
    tune.report({**outcome, "placement": placement(started), "seconds": time.time() - started})


def measure_task(cfg_dict: dict, weights: bytes, threads: int, reserved: dict, memory_gb: float = 0) -> dict:
    """Measure a trained cell's cost, holding ``reserved`` of its node (a whole node's CPUs and
    GPUs when one fits): {"metrics", "record", "seconds"}, or {"error", "seconds"}. The record's
    ``node`` says where it ran, what it held and whether that was the whole node (``exclusive``)."""
    started = time.time()
    try:
        cfg = from_dict(RunConfig, cfg_dict)
        device = resolve_device(cfg.device)
        model = load_segmentor(cfg, weights)
        with memory_cap(memory_gb):
            metrics, record = measure_model(model.to(device), cfg.measure, device, threads)
        where = placement(started)
        total = next(node["Resources"] for node in ray.nodes() if node["NodeID"] == where["node_id"])
        exclusive = all(reserved.get(k, 0) >= total.get(k, 0) for k in ("CPU", "GPU"))
        record["node"] = {"exclusive": exclusive, "reserved": reserved, **where}
        return {"metrics": metrics, "record": record, "seconds": time.time() - started}
    except Exception as exc:
        return {"error": one_line(exc), "seconds": time.time() - started}
