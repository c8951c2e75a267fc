"""Opening an MLflow tracking store: its URI, a client that has answered, run searches.

Default store: ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI`` or an
explicit URI overrides it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.errors import InputError, first_line

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
    uri = resolve_tracking_uri(uri)
    try:
        with quick_http_failures(), _first_open_lock(uri):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise InputError(f"tracking store {store_label(uri)} is not reachable or not readable "
                         f"({first_line(exc)[:300]}); {advice}") from None
    return client


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of store ``uri`` keeps its runs' artifacts: beside a SQLite store's
    file, ``<its folder>/mlartifacts/<experiment>`` (a name with other characters than letters,
    digits, ``._-`` spelled safe and suffixed with its digest); None elsewhere (a tracking server
    serves its own). MLflow's default, ``./mlruns`` of the working directory, would put a grid's
    weights wherever it was started from."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    if safe != experiment:
        safe += "-" + hashlib.sha256(experiment.encode()).hexdigest()[:8]
    return (folder / safe).as_uri()


def ensure_experiment(client, experiment: str, uri: str) -> str:
    """The id of MLflow experiment ``experiment``, created (its artifacts at ``artifact_location``)
    when there is none; an existing experiment is left as it is."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))


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
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"--experiment {experiment!r}: no such experiment in {uri}")
    return found.experiment_id
