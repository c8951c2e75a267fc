"""A logged cell's trained model rebuilt from its run: ``config.yaml`` (the resolved config) and
``weights.pt`` (its state dict)."""

from __future__ import annotations

import json
import tempfile

import yaml

from harness.config import RunConfig, from_dict
from harness.errors import InputError
from harness.modeling import Segmentor, load_segmentor
from harness.tracking.artifacts import WEIGHTS_ARTIFACT, download_artifact, read_artifact
from harness.tracking.client import open_client


def load_run(run_id: str, tracking_uri: str) -> tuple[RunConfig, Segmentor]:
    """(resolved ``RunConfig``, trained ``Segmentor`` in eval mode on the CPU) of a logged cell."""
    open_client(tracking_uri)  # a damaged or unreachable store: one line naming it
    with tempfile.TemporaryDirectory() as folder:
        config = download_artifact(run_id, "config.yaml", tracking_uri, folder)
        weights = download_artifact(run_id, WEIGHTS_ARTIFACT, tracking_uri, folder)
        cfg = from_dict(RunConfig, yaml.safe_load(config.read_text()))
        return cfg, load_segmentor(cfg, weights)


def logged_measure_threads(run_id: str, tracking_uri: str, default: int) -> int:
    """The torch threads a logged cell's cost was measured with (its ``measurement.json``), or ``default``."""
    try:
        return json.loads(read_artifact(run_id, "measurement.json", tracking_uri))["machine"]["threads"]
    except (InputError, KeyError):
        return default
