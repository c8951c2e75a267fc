"""Classifier x backbone grids on a Ray cluster (docs/architecture.md, "Grid").

A grid spec (``jobs/*.yaml``) expands to cells, one ``RunConfig`` each (``spec``). Ray Tune runs
each cell still to run as a trial, whenever the cluster has room for it (``schedule``): the trial
trains and evaluates the cell in its own process, or drives the cell's Ray Train run over
``resources.workers`` workers, checkpointing under the grid's storage so that a restarted cell
resumes (``tasks``). This process is the only writer of the grid's store (``store``: MLflow, a
parent run per grid and a child run per cell, and ``results.jsonl``): a cell's run is RUNNING from
its first step with its training rows as step metrics, FINISHED with its mIoU and weights as soon
as it has trained, and gets its cost when a task that holds a whole node has measured it. One
driver per grid (``harness.tracking.lease``); live progress on the terminal (``progress``); the comparison table
and scheduling overhead (``table``).

Re-running a grid skips cells whose ``config_hash`` already has a FINISHED child run, measures
FINISHED cells that lack the spec's measurement (never retraining them) and runs the rest (new
cells included). An exception in a cell makes it FAILED (error and traceback recorded) and the
grid goes on; a lost worker, trial or node is retried ``resources.retries`` times from the cell's
newest checkpoint (Ray Train's and Ray Tune's ``FailureConfig``) before the cell counts as FAILED.
"""

from __future__ import annotations

import importlib

# Public name -> its module. Imported on first use (PEP 562): the grid's driver side imports Ray,
# MLflow and matplotlib, which the processes that run a cell's trial (``harness.grid.tasks``) and
# import this package first must not pay for.
_PUBLIC = {
    "GridBusy": "store",
    "GridOutcome": "table",
    "GridSpec": "spec",
    "GridStore": "store",
    "Resources": "spec",
    "comparison_table": "table",
    "describe": "spec",
    "dry_run": "table",
    "expand": "spec",
    "load_grid": "spec",
    "overhead": "table",
    "run_grid": "schedule",
    "validate_cells": "spec",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
