"""MLflow logging of cell results. Only the driver process calls this (SQLite wants one writer).

Default store: ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
or an explicit URI overrides it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import yaml

from harness.config import ENGINE_PARAM_PREFIX, HASH_VERSION, MAX_PARAM_LENGTH, config_params
from harness.results import to_json

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextlib.contextmanager
def quick_http_failures(retries: int = 0):
    """MLflow retries an HTTP store for minutes by default; a probe should fail in seconds and
    a cell's logging after a few (settings the user made in the environment are kept)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [key for key in quick if key not in os.environ]
    os.environ.update({key: quick[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def store_label(uri: str) -> str:
    """How errors name a tracking store: the database file for ``sqlite:///`` URIs, else the URI."""
    return f"{uri.removeprefix('sqlite:///')} (MLflow SQLite store {uri})" if uri.startswith("sqlite:///") else uri


@contextlib.contextmanager
def _first_open_lock(uri: str):
    """Serialise opening a SQLite store across processes: MLflow creates and migrates a new
    database on first use, and two processes doing it at once fail ("duplicate column")."""
    import fcntl

    path = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not path.parent.is_dir():
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def open_client(uri: str | None = None, advice: str = "pass --tracking-uri, or move a damaged file aside"):
    """An ``MlflowClient`` for ``uri`` that has answered one query; ``InputError`` naming the
    store (the file, for SQLite) when it cannot be read: unreachable, corrupt, not MLflow's."""
    from mlflow.tracking import MlflowClient

    from harness.errors import InputError, first_line

    uri = resolve_tracking_uri(uri)
    try:
        with quick_http_failures(), _first_open_lock(uri):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise InputError(f"tracking store {store_label(uri)} is not reachable or not readable "
                         f"({first_line(exc)[:300]}); {advice}") from None
    return client


def git_commit() -> str:
    """The commit of the segheads checkout this code runs from, or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def search_all_runs(client, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list:
    """Every run matching ``filter_string``, all result pages of ``MlflowClient.search_runs``."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token, order_by=order_by)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


FINISHED_CELLS = "attributes.status = 'FINISHED' and tags.config_hash != ''"  # a grid's finished child runs


def experiment_id(client, experiment: str, uri: str) -> str:
    """The id of MLflow experiment ``experiment``; ``InputError`` naming it and the store if there is none."""
    from harness.errors import InputError

    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"--experiment {experiment!r}: no such experiment in {uri}")
    return found.experiment_id


def read_artifact_bytes(run_id: str, name: str, tracking_uri: str) -> bytes:
    """The bytes of a run's artifact ``name`` (``InputError`` naming the run if it has none)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return download_artifact(run_id, name, tracking_uri, folder).read_bytes()


def read_artifact(run_id: str, name: str, tracking_uri: str) -> str:
    """The text of a run's artifact ``name`` (``InputError`` naming the run if it has none)."""
    return read_artifact_bytes(run_id, name, tracking_uri).decode()


def read_per_image_counts(run_id: str, tracking_uri: str) -> list | None:
    """A cell's ``per_image_counts.json``, or None for runs logged before it existed."""
    from harness.errors import InputError

    try:
        return json.loads(read_artifact(run_id, "per_image_counts.json", tracking_uri))
    except InputError:
        return None


WEIGHTS_ARTIFACT = "weights.pt"  # a FINISHED cell's trained state dict


def _log_bytes(client, run_id: str, data: bytes, name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        client.log_artifact(run_id, str(path))


def download_artifact(run_id: str, name: str, tracking_uri: str, folder: str | Path) -> Path:
    """A run's artifact ``name`` copied into ``folder``; ``InputError`` naming the run if it has none."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from harness.errors import InputError

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(folder),
                                                        tracking_uri=tracking_uri))
    except (OSError, MlflowException) as exc:
        raise InputError(f"run {run_id} in {tracking_uri}: no artifact {name!r} "
                         f"({str(exc).splitlines()[0][:200]})") from None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _per_class_csv(per_class: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", "IoU", "ACC"])
    writer.writerows(zip(per_class["class"], per_class["IoU"], per_class["ACC"]))
    return buffer.getvalue()


_NOT_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(key: str) -> str:
    """``key`` as an MLflow metric name: characters MLflow refuses (detectron2's ADE20K classes
    have commas, ``IoU-road, route``) become ``_``; ``per_class.csv`` keeps the names as they are."""
    return _NOT_IN_METRIC_NAMES.sub("_", key)


def _finite(value) -> bool:
    """Metrics read back from JSON hold None where the number was not finite."""
    return value is not None and math.isfinite(value)


def _metrics(result: dict, timestamp: int) -> list:
    """A CellResult's finite metrics as MLflow ``Metric``s at step 0, under ``metric_name``s."""
    from mlflow.entities import Metric

    return [Metric(metric_name(k), float(v), timestamp, 0) for k, v in result["metrics"].items() if _finite(v)]


def _log_result_files(client, run_id: str, result: dict) -> None:
    """``config.yaml``, ``cell_result.json`` and (measured) ``measurement.json``: what a re-measurement rewrites."""
    client.log_text(run_id, yaml.safe_dump(result["config"], sort_keys=False), "config.yaml")
    client.log_text(run_id, to_json({k: v for k, v in result.items() if k != "per_image"}), "cell_result.json")
    if result.get("measurement"):
        client.log_dict(run_id, result["measurement"], "measurement.json")


def update_measurement(result: dict, run_id: str, tracking_uri: str | None = None,
                       prefixes: tuple[str, ...] = ()) -> None:
    """Write a FINISHED cell's cost measurement (``result["measurement"]`` and its metrics, those
    whose names start with one of ``prefixes``) into its existing run ``run_id``: metrics logged
    again (MLflow keeps each metric's history; the latest value is the one shown and read), the
    result files rewritten. The run's params and its training stay as they were."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    measured = [m for m in _metrics(result, int(time.time() * 1000)) if m.key.startswith(prefixes)]
    for chunk in _chunks(measured, 1000):
        client.log_batch(run_id, metrics=chunk)
    _log_result_files(client, run_id, result)


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
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(k), float(v), now, int(row["iteration"])) for row in rows
               for k, v in row.items() if k != "iteration" and _finite(v)]
    for chunk in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)


def log_cell(result: dict, tracking_uri: str | None = None, experiment: str = "segheads",
             parent_run_id: str | None = None, weights: bytes | None = None, run_id: str | None = None) -> str:
    """Write one CellResult as an MLflow run and return its run id: a new run, or ``run_id``, the
    cell's live run (created when it started, its training rows logged as they came; the history
    rows it lacks are added, and its final metrics leave out the names its rows hold as step series).

    Tags: ``cell_run_tags``; params: the resolved config, flattened, without the measurement settings
    (``config_params``: they live in ``measurement.json`` and ``config.yaml``); metrics: every finite
    metric, plus the training curve as stepped ``curve/*`` series;
    artifacts: ``per_class.csv``, ``config.yaml``, ``training_curve.json``, ``cell_result.json``
    and, when the cell was measured, ``measurement.json`` (settings, timer, machine fingerprint);
    ``weights.pt``, the trained state dict (``torch.load(..., weights_only=True)``), when given.
    ``per_image_counts.json`` holds the evaluation's per-image counts (``per_image``) and is
    left out of ``cell_result.json``. A FAILED result gets the tag ``error`` and the artifact ``traceback.txt``; the run ends
    with the result's status.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    live = {key for row in result["history"] for key in row} if run_id else set()
    if run_id is None:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, tags=cell_run_tags(result["tags"], parent_run_id)).info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in config_params(result["config"]).items()]
        # How it trained (workers, accumulation, precision, SyncBN as resolved): said, never its identity.
        params += [Param(f"{ENGINE_PARAM_PREFIX}{k}", str(v))
                   for k, v in result.get("environment", {}).get("engine", {}).items()]
        metrics = [m for m in _metrics(result, now) if m.key not in live]
        if live:  # rows the driver never got (reported after the last it logged, before a resume point)
            logged = {m.step for m in client.get_metric_history(run_id, "loss/total")}
            log_rows(client, run_id, [row for row in result["history"] if row["iteration"] not in logged])
        for row in result["history"]:
            metrics += [Metric(f"curve/{k}", float(v), now, row["iteration"]) for k, v in row.items()
                        if k != "iteration" and _finite(v)]
        for chunk in _chunks(params, 100):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, 1000):
            client.log_batch(run_id, metrics=chunk)
        if result.get("per_class"):
            client.log_text(run_id, _per_class_csv(result["per_class"]), "per_class.csv")
        if result.get("error"):
            client.set_tag(run_id, "error", result["error"][:MAX_PARAM_LENGTH])
            client.log_text(run_id, result.get("traceback", ""), "traceback.txt")
        client.log_dict(run_id, result["history"], "training_curve.json")
        if result.get("per_image"):
            client.log_text(run_id, json.dumps(result["per_image"], separators=(",", ":")), "per_image_counts.json")
        client.set_tag(run_id, "environment", json.dumps(result.get("environment", {})))
        _log_result_files(client, run_id, result)
        if weights is not None:
            _log_bytes(client, run_id, weights, WEIGHTS_ARTIFACT)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, result.get("status", "FINISHED"))
    return run_id
