"""Tracking: MLflow, written only by a grid's driver or ``segheads run`` (SQLite wants one writer).

- ``client``: ``resolve_tracking_uri`` (default ``sqlite:///mlflow.db``), ``open_client`` (a client
  that has answered, or a one-line ``InputError`` naming the store), ``search_all_runs``,
  ``ensure_experiment`` (new experiments keep their artifacts beside a SQLite store,
  ``artifact_location``, not in the working directory).
- ``log``: ``log_cell`` (a ``CellResult`` as a run, through ``CellResult.to_mlflow``),
  ``log_rows`` (training rows as step series), ``update_measurement``, ``cell_run_tags``.
- ``read``: ``read_result`` (a run's ``CellResult``), ``finished_runs``, ``read_per_image_counts``,
  ``read_diagnostics``, ``read_sample_predictions``.
- ``artifacts``: reading a run's artifacts; ``models``: ``load_run`` (a logged cell's trained model).
- ``grid_runs``: ``GridTracking``, a grid's runs behind one interface (``MlflowGridTracking``;
  ``LocalGridTracking`` without a store), which ``harness.grid.GridStore`` composes with ``results.jsonl``.
- ``lease``: the one-driver-per-grid lease (``TrackingLease`` in the store, ``FileLease`` without
  one; ``GridBusy``).
- ``trunks``: ``resolve_trunks`` (cells' ``trunk`` sections made one weights file each, pinned by digest).
- ``ui``: ``serve_ui`` (``segheads ui``).
"""

from harness.tracking.artifacts import WEIGHTS_ARTIFACT, download_artifact, read_artifact, read_artifact_bytes
from harness.tracking.client import (
    DEFAULT_TRACKING_URI,
    FINISHED_CELLS,
    artifact_location,
    ensure_experiment,
    experiment_id,
    git_commit,
    open_client,
    quick_http_failures,
    resolve_tracking_uri,
    search_all_runs,
    store_label,
)
from harness.tracking.grid_runs import GridTracking, LocalGridTracking, MlflowGridTracking
from harness.tracking.lease import LEASE_TAG, DriverLease, FileLease, GridBusy, TrackingLease
from harness.tracking.log import cell_run_tags, log_cell, log_rows, update_measurement
from harness.tracking.models import load_run, logged_measure_threads
from harness.tracking.read import (
    finished_runs,
    read_diagnostics,
    read_per_image_counts,
    read_result,
    read_sample_predictions,
)
from harness.tracking.trunks import TRUNKS, resolve_trunk, resolve_trunks
from harness.tracking.ui import serve_ui

__all__ = [
    "DEFAULT_TRACKING_URI",
    "FINISHED_CELLS",
    "LEASE_TAG",
    "DriverLease",
    "FileLease",
    "GridBusy",
    "GridTracking",
    "LocalGridTracking",
    "MlflowGridTracking",
    "TrackingLease",
    "TRUNKS",
    "WEIGHTS_ARTIFACT",
    "artifact_location",
    "cell_run_tags",
    "download_artifact",
    "ensure_experiment",
    "experiment_id",
    "finished_runs",
    "git_commit",
    "load_run",
    "log_cell",
    "log_rows",
    "logged_measure_threads",
    "open_client",
    "quick_http_failures",
    "read_artifact",
    "read_artifact_bytes",
    "read_diagnostics",
    "read_sample_predictions",
    "read_per_image_counts",
    "read_result",
    "resolve_tracking_uri",
    "resolve_trunk",
    "resolve_trunks",
    "search_all_runs",
    "serve_ui",
    "store_label",
    "update_measurement",
]
