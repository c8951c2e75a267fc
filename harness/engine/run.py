"""Running a cell: the one place that decides where a cell trains, what its failure means and
how it starts over. ``segheads run`` and a grid's trial both call ``run``.

- One worker with checkpoints on a path trains in this process (as detectron2's ``launch`` calls
  ``main`` directly for one process); several workers, or checkpoints at a URI, are a Ray Train run
  (``launch``), which restarts lost workers ``retries`` times and resumes from the cell's newest
  checkpoint by itself.
- A ``CELL_ERRORS`` error (a bad setting, a non-finite loss: every worker reaches it at the same
  point) fails the cell without retries, and the cell's checkpoints are forgotten: run again, it
  starts over instead of resuming into the same error. Any error is raised to the caller, who says
  what a failure is (the CLI: its message and exit status; the grid: a FAILED ``CellResult``, from
  ``failed_result``).
- The result is built once by the worker (``train_cell``); a measurement makes a new one
  (``measure_cell``, ``CellResult.with_measurement``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import metric_keys as keys
from harness.config import RunConfig, config_hash, to_dict
from harness.data import split_batch
from harness.engine.cell import cell_tags, resolve_device, train_cell
from harness.engine.context import LocalContext
from harness.engine.launch import (
    CELL_ERRORS,
    final_checkpoint,
    launch,
    needs_ray_train,
    ray_session,
    read_cell,
)
from harness.engine.memory import memory_cap
from harness.errors import one_line
from harness.logs import logger
from harness.measure import measure_model
from harness.modeling import Segmentor, load_segmentor, resolve_classifier, state_dict_bytes
from harness.plugins import activate, with_plugins
from harness.results import FAILED, CellResult


@dataclass(frozen=True)
class CellResources:
    """What one cell's training holds: ``workers`` data-parallel workers, each ``cpus`` CPUs (also
    its torch threads; 0: ``train.threads``, else its share of this machine's cores) and ``gpus``
    GPUs, its process's resident memory capped at ``memory_gb`` (0: no cap); a lost worker is restarted ``retries``
    times from the newest checkpoint."""

    workers: int = 1
    cpus: float = 0
    gpus: float = 0
    memory_gb: float = 0
    retries: int = 3


class Reporter:
    """Where a running cell's reports (training rows, checkpoints' metrics) go besides its checkpoints:
    ``__call__(metrics)`` in the process that trains one worker; ``train_callbacks()`` the Ray
    Train callbacks that hand a Ray Train run's reports on from its controller. The grid's trial
    passes one that reports to Ray Tune; nothing by default."""

    def __call__(self, metrics: dict) -> None:
        pass

    def train_callbacks(self) -> tuple:
        return ()


class _ReportingContext(LocalContext):
    """One worker in this process whose every report is also handed to ``reporter``."""

    def __init__(self, device: torch.device, run_dir: Path | None, resume: bool, reporter: Reporter) -> None:
        super().__init__(device, run_dir, resume)
        self.reporter = reporter

    def report(self, metrics: dict, folder: Path | None = None, name: str | None = None) -> None:
        super().report(metrics, folder, name)
        self.reporter(metrics)


class TrainedCell:
    """A cell that trained: its resolved ``cfg``, its ``result`` and its trained ``model()`` /
    ``weights()``, held (one process) or read from its final checkpoint when first asked for
    (a Ray Train run, or ``trained_cell``)."""

    def __init__(self, cfg: RunConfig, result: CellResult | None = None, model: Segmentor | None = None,
                 final=None) -> None:
        self.cfg, self._result, self._model, self._final = cfg, result, model, final

    @functools.cached_property
    def _read(self) -> tuple[CellResult, bytes]:
        return read_cell(self._final)

    @property
    def result(self) -> CellResult:
        return self._result if self._result is not None else self._read[0]

    def weights(self) -> bytes:
        """The trained state dict as ``torch.save`` bytes (what a FINISHED run logs as ``weights.pt``)."""
        return state_dict_bytes(self._model) if self._model is not None else self._read[1]

    def model(self) -> Segmentor:
        """The trained model, on the cell's device."""
        if self._model is None:
            self._model = load_segmentor(self.cfg, self._read[1]).to(resolve_device(self.cfg.device))
        return self._model


def run(cfg: RunConfig, resources: CellResources = CellResources(), storage: str | Path | None = None,
        resume: bool = False, reporter: Reporter | None = None, measure: bool = True) -> TrainedCell:
    """Train and evaluate cell ``cfg`` (module docstring: where, and what a failure does), with
    checkpoints under ``storage``/<config_hash> (None: one process keeps none); ``resume``: one
    process continues from its newest checkpoint (a Ray Train run always does). With ``measure``
    and ``measure.enabled`` its cost is measured in this process after training (a grid measures
    on a node of its own instead)."""
    activate(cfg)  # its plugins, imported in this process (a grid trial's, on any node) before its names are read
    workers = resources.workers
    threads = cfg.train.threads or int(resources.cpus) or max(1, (os.cpu_count() or 1) // workers)
    # Each worker's share of the cores (not part of the cell's identity), the head's preset spelled out, and
    # the plugins that provide its parts stamped (a grid's cells already are).
    cfg = with_plugins(resolve_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))))
    split_batch(cfg.data.batch_size, workers, cfg.train.accumulate)
    reporter = reporter or Reporter()
    if needs_ray_train(workers, storage):
        with ray_session(None):
            final = launch(train_cell, cfg, workers, storage, resources.cpus or threads, resources.gpus,
                           resources.memory_gb, resources.retries, callbacks=reporter.train_callbacks())
        trained = TrainedCell(cfg, final=final)
    else:
        run_dir = Path(storage) / config_hash(cfg) if storage is not None else None
        context = _ReportingContext(resolve_device(cfg.device), run_dir, resume, reporter)
        try:
            with memory_cap(resources.memory_gb, "training"):
                result, model = train_cell(cfg, context)
        except CELL_ERRORS:
            if run_dir is not None:  # as a Ray Train run's: a failed cell run again starts over
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        trained = TrainedCell(cfg, result, model)
    if measure and cfg.measure.enabled:
        model = trained.model()
        trained = TrainedCell(cfg, measure_cell(trained.result, model, cfg, threads), model)
    return trained


def trained_cell(storage: str | Path, cfg: RunConfig) -> TrainedCell:
    """The cell ``cfg`` that ``run`` trained under ``storage`` (its final checkpoint, read on demand)."""
    return TrainedCell(cfg, final=final_checkpoint(storage, cfg))


def measure_cell(result: CellResult, model: Segmentor, cfg: RunConfig, threads: int) -> CellResult:
    """``result`` with ``model``'s cost measured at ``cfg.measure`` on ``threads`` threads (0: all cores)."""
    began = time.perf_counter()
    device = next(model.parameters()).device
    metrics, record = measure_model(model, cfg.measure, device, threads)
    batch = record["measured_batch_sizes"][0]
    logger.info(f"measured at {cfg.measure.image_size}px in {time.perf_counter() - began:.1f} s: "
                f"{metrics[keys.gflops()]:.2f} GFLOPs, p50 {metrics[keys.latency(batch)]:.1f} ms at batch {batch}")
    return result.with_measurement(metrics, record)


def failed_result(cfg: RunConfig, exc: BaseException, remote_traceback: str | None = None) -> CellResult:
    """The FAILED ``CellResult`` of a cell that raised ``exc``: the error, its traceback (a Ray
    Train worker's own, or ``remote_traceback``) and, for a non-finite loss, the iteration."""
    return CellResult(
        FAILED, to_dict(cfg), config_hash(cfg), cell_tags(cfg),
        error=getattr(exc, "error", None) or one_line(exc),  # a Ray Train worker's error (CellFailed)
        traceback=(getattr(exc, "remote_traceback", None) or remote_traceback
                   or "".join(traceback.format_exception(exc))),
        failed_at_iteration=getattr(exc, "iteration", None))
