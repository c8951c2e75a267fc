"""Reading cells back from MLflow: a run's ``CellResult`` (``CellResult.from_mlflow``) and a
grid's FINISHED runs."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from harness.errors import InputError
from harness.results import (
    CELL_RESULT_ARTIFACT,
    DIAGNOSTICS_ARTIFACT,
    PER_IMAGE_ARTIFACT,
    PREDICTIONS_ARTIFACT,
    CellResult,
    MlflowRecord,
)
from harness.tracking.artifacts import read_artifact
from harness.tracking.client import FINISHED_CELLS, experiment_id, search_all_runs


def read_result(run_id: str, tracking_uri: str) -> CellResult:
    """The ``CellResult`` logged in MLflow run ``run_id`` (``InputError`` naming the run when it
    holds none)."""
    run = MlflowClient(tracking_uri).get_run(run_id)
    artifacts = {CELL_RESULT_ARTIFACT: read_artifact(run_id, CELL_RESULT_ARTIFACT, tracking_uri)}
    for name in (PER_IMAGE_ARTIFACT, PREDICTIONS_ARTIFACT):
        text = _optional_text(run_id, name, tracking_uri)
        if text is not None:  # parsed once, by CellResult.from_mlflow
            artifacts[name] = text
    record = MlflowRecord(run.info.status, dict(run.data.tags), dict(run.data.params), dict(run.data.metrics), {},
                          artifacts)
    return CellResult.from_mlflow(record, f"run {run_id}")


def _optional_text(run_id: str, name: str, tracking_uri: str) -> str | None:
    """The text of a run's artifact ``name``, or None when the run has none."""
    try:
        return read_artifact(run_id, name, tracking_uri)
    except InputError:
        return None


def _optional_json(run_id: str, name: str, tracking_uri: str):
    """A run's JSON artifact ``name``, or None when the run has none."""
    text = _optional_text(run_id, name, tracking_uri)
    return None if text is None else json.loads(text)


def read_per_image_counts(run_id: str, tracking_uri: str) -> list | None:
    """A cell's ``per_image_counts.json``, or None for runs logged before it existed."""
    return _optional_json(run_id, PER_IMAGE_ARTIFACT, tracking_uri)


def read_sample_predictions(run_id: str, tracking_uri: str) -> dict | None:
    """A cell's label maps of the report's sample images (``sample_predictions.json``), or None for
    runs logged before it existed."""
    return _optional_json(run_id, PREDICTIONS_ARTIFACT, tracking_uri)


def read_diagnostics(run_id: str, tracking_uri: str) -> dict | None:
    """A cell's head diagnostics (``diagnostics.json``), or None when its head has none."""
    return _optional_json(run_id, DIAGNOSTICS_ARTIFACT, tracking_uri)


def finished_runs(client, experiment: str, tracking_uri: str, parent_run_id: str | None = None) -> list:
    """The FINISHED cell runs of ``experiment`` (of one grid's parent run when given)."""
    query = FINISHED_CELLS + (f" and tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else "")
    return search_all_runs(client, [experiment_id(client, experiment, tracking_uri)], query)
