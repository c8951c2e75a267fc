"""Writing cells to MLflow: a cell's run (created live, its training rows as step series, then its
``CellResult`` through ``CellResult.to_mlflow``) and a re-measurement into the same run. Only a grid's
driver (or ``segheads run``) calls these: SQLite wants one writer."""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from harness import metric_keys as keys
from harness.config import HASH_VERSION
from harness.results import CELL_RESULT_ARTIFACT, CellResult, is_finite, metric_name
from harness.tracking.artifacts import WEIGHTS_ARTIFACT, log_bytes
from harness.tracking.client import ensure_experiment, git_commit, resolve_tracking_uri

_REWRITTEN = ("config.yaml", CELL_RESULT_ARTIFACT, "measurement.json")  # what a re-measurement rewrites


def _log_artifacts(client, run_id: str, artifacts: dict[str, str]) -> None:
    for name, text in artifacts.items():
        client.log_text(run_id, text, name)


def update_measurement(result: CellResult, run_id: str, tracking_uri: str | None = None) -> None:
    """Write a FINISHED cell's cost measurement (``result.measurement`` and the metrics a
    measurement owns, ``metric_keys.is_measurement``) into its existing run ``run_id``: metrics logged
    again (MLflow keeps each metric's history; the latest value is the one shown and read), the
    result files rewritten. The run's params and its training stay as they were."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    record = result.to_mlflow()
    now = int(time.time() * 1000)
    measured = [Metric(k, v, now, 0) for k, v in record.metrics.items() if keys.is_measurement(k)]
    for chunk in _chunks(measured, 1000):
        client.log_batch(run_id, metrics=chunk)
    _log_artifacts(client, run_id, {k: v for k, v in record.artifacts.items() if k in _REWRITTEN})


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cell_run_tags(tags: dict, parent_run_id: str | None) -> dict:
    """A cell's child-run tags: the cell's tags (backbone, classifier, dataset, seed, neck,
    config_hash), ``hash_version`` (what its ``config_hash`` covers, ``harness.config.HASH_VERSION``),
    ``git_commit``, the run name and the grid's parent run."""
    tags = {**tags, "hash_version": HASH_VERSION, "git_commit": git_commit(),
            "mlflow.runName": f"{tags['classifier']}@{tags['backbone']}-s{tags['seed']}"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def log_rows(client, run_id: str, rows: list[dict]) -> None:
    """Training rows (``{"iteration", "loss/...", "lr", "time/...", "val/..."}``) as step metrics of
    run ``run_id``, step = the row's iteration."""
    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(k), float(v), now, int(row["iteration"])) for row in rows
               for k, v in row.items() if k != "iteration" and is_finite(v)]
    for chunk in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)


def log_cell(result: CellResult, tracking_uri: str | None = None, experiment: str = "segheads",
             parent_run_id: str | None = None, weights: bytes | None = None, run_id: str | None = None) -> str:
    """Write one ``CellResult`` as an MLflow run (``CellResult.to_mlflow``) and return its run id: a
    new run, or ``run_id``, the cell's live run (created when it started, its training rows logged
    as they came; the history rows it lacks are added, and its final metrics leave out the names
    its rows hold as step series). Tags: ``cell_run_tags`` and the record's; params, metrics, the
    training curve as stepped ``curve/*`` series and the record's artifacts; ``weights.pt``, the
    trained state dict (``torch.load(..., weights_only=True)``), when given. The run ends with the
    result's status."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    record = result.to_mlflow()
    live = {key for row in result.history for key in row} if run_id else set()
    if run_id is None:
        experiment_id = ensure_experiment(client, experiment, resolve_tracking_uri(tracking_uri))
        run_id = client.create_run(experiment_id, tags=cell_run_tags(result.tags, parent_run_id)).info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in record.params.items()]
        metrics = [Metric(k, v, now, 0) for k, v in record.metrics.items() if k not in live]
        if live:  # rows the driver never got (reported after the last it logged, before a resume point)
            logged = {m.step for m in client.get_metric_history(run_id, keys.TOTAL_LOSS)}
            log_rows(client, run_id, [row for row in result.history if row["iteration"] not in logged])
        metrics += [Metric(name, value, now, step) for name, points in record.series.items() for step, value in points]
        for chunk in _chunks(params, 100):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, 1000):
            client.log_batch(run_id, metrics=chunk)
        for key, value in record.tags.items():
            if key not in result.tags:
                client.set_tag(run_id, key, value)
        _log_artifacts(client, run_id, record.artifacts)
        if weights is not None:
            log_bytes(client, run_id, weights, WEIGHTS_ARTIFACT)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, record.status)
    return run_id
