"""A run's artifacts: reading them back (text, bytes, files) and logging bytes as a file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from harness.errors import InputError

WEIGHTS_ARTIFACT = "weights.pt"  # a FINISHED cell's trained state dict


def read_artifact_bytes(run_id: str, name: str, tracking_uri: str) -> bytes:
    """The bytes of a run's artifact ``name`` (``InputError`` naming the run if it has none)."""
    with tempfile.TemporaryDirectory() as folder:
        return download_artifact(run_id, name, tracking_uri, folder).read_bytes()


def read_artifact(run_id: str, name: str, tracking_uri: str) -> str:
    """The text of a run's artifact ``name`` (``InputError`` naming the run if it has none)."""
    return read_artifact_bytes(run_id, name, tracking_uri).decode()


def download_artifact(run_id: str, name: str, tracking_uri: str, folder: str | Path) -> Path:
    """A run's artifact ``name`` copied into ``folder``; ``InputError`` naming the run if it has none."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(folder),
                                                        tracking_uri=tracking_uri))
    except (OSError, MlflowException) as exc:
        raise InputError(f"run {run_id} in {tracking_uri}: no artifact {name!r} "
                         f"({str(exc).splitlines()[0][:200]})") from None


def log_bytes(client, run_id: str, data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        client.log_artifact(run_id, str(path))
