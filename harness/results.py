"""``CellResult``: one cell's outcome, the typed record every package passes on (engine -> grid ->
tracking -> report / check), with its two stored forms: a ``results.jsonl`` line (``to_json`` /
``from_json``; ``read_results`` reads a file of them) and an MLflow run (``to_mlflow`` /
``from_mlflow``, through ``MlflowRecord``).

JSON is strict: non-finite floats are written as null (and read back as None). In MLflow, the
run's ``cell_result.json`` (everything but the per-image counts) and ``per_image_counts.json`` are
the record; tags, params, metrics and the other artifacts are views of it for MLflow's UI and search.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import metric_keys as keys
from harness.config import ENGINE_PARAM_PREFIX, MAX_PARAM_LENGTH, RunConfig, config_hash, config_params, from_dict
from harness.errors import InputError

FINISHED, FAILED = "FINISHED", "FAILED"
CELL_RESULT_ARTIFACT = "cell_result.json"
PER_IMAGE_ARTIFACT = "per_image_counts.json"
DIAGNOSTICS_ARTIFACT = "diagnostics.json"
PREDICTIONS_ARTIFACT = "sample_predictions.json"
_OPTIONAL = ("diagnostics", "predictions", "error", "traceback", "failed_at_iteration", "seconds", "measure_seconds",
             "measure_error", "config_hash_v1")
_NOT_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_\-. :/]")


@dataclass
class CellResult:
    """One cell: ``status`` (FINISHED or FAILED), its resolved ``config`` (``to_dict`` of a
    ``RunConfig``), ``config_hash`` and ``tags`` (backbone, classifier, dataset, seed, neck,
    config_hash); ``metrics`` (evaluation, parameters, timings, then the measurement's);
    ``per_class`` (``{"class", "IoU", "ACC"}`` lists), the training ``history`` rows, the
    evaluation's ``per_image`` counts, ``environment`` (machine, engine, Ray placement) and
    ``measurement`` (how its cost was measured, None until it is); ``diagnostics``, the head's own
    per-class and matrix diagnostics (``PixelClassifier.diagnostics``; its scalars are metrics);
    ``predictions``, its label maps of the report's sample validation images by position
    (``harness.evaluation.samples``: ``{"<index>": encode_label_map(...)}``). A FAILED cell has ``error``,
    ``traceback`` and, for a non-finite loss, ``failed_at_iteration``; a grid adds ``seconds`` (the trial's wall time), ``measure_seconds`` and
    ``measure_error``; a line re-hashed when read keeps the hash it was written with in
    ``config_hash_v1``."""

    status: str
    config: dict
    config_hash: str
    tags: dict[str, str]
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_class: dict | None = None
    history: list[dict] = field(default_factory=list)
    per_image: list | None = None
    environment: dict = field(default_factory=dict)
    measurement: dict | None = None
    diagnostics: dict | None = None
    predictions: dict | None = None
    error: str | None = None
    traceback: str | None = None
    failed_at_iteration: int | None = None
    seconds: float | None = None
    measure_seconds: float | None = None
    measure_error: str | None = None
    config_hash_v1: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the optional fields only when set), as ``results.jsonl`` holds it."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if not (k in _OPTIONAL and v is None)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "cell result") -> CellResult:
        """``InputError`` naming ``where`` and the key when ``data`` is not a cell result."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; a cell result has {', '.join(sorted(names))}")
        missing = [k for k in ("status", "config", "config_hash", "tags") if k not in data]
        if missing:
            raise InputError(f"{where}: missing key {missing[0]!r}")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(_finite_or_none(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, where: str = "cell result") -> CellResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg})") from None
        return cls.from_dict(data, where)

    def rehashed(self, digest: str) -> CellResult:
        """This result under ``config_hash`` ``digest``; the hash it had, when different, is kept
        as ``config_hash_v1``."""
        if self.config_hash == digest:
            return self
        return dataclasses.replace(self, config_hash=digest, config_hash_v1=self.config_hash,
                                   tags={**self.tags, "config_hash": digest})

    def with_measurement(self, metrics: dict[str, float] | None = None, record: dict | None = None,
                         seconds: float | None = None, error: str | None = None) -> CellResult:
        """This result with a cost measurement: its ``metrics`` added (replacing any the result had,
        ``metric_keys.is_measurement``) and how it was taken (``record``); or, with ``error``, the
        reason it has none. A result is never changed in place: each package hands on a new one."""
        kept = {k: v for k, v in self.metrics.items() if not keys.is_measurement(k)}
        return dataclasses.replace(self, metrics={**kept, **(metrics or {})}, measurement=record,
                                   measure_seconds=seconds, measure_error=error)

    def without_measurement(self, settings: dict) -> CellResult:
        """This result before a measurement at ``settings`` (its config's ``measure`` section)."""
        return dataclasses.replace(self.with_measurement(), config={**self.config, "measure": settings})

    def placed(self, placement: dict, seconds: float) -> CellResult:
        """This result with where its grid trial ran (``environment["ray"]``) and its wall time."""
        return dataclasses.replace(self, environment={**self.environment, "ray": placement}, seconds=seconds)

    def to_mlflow(self) -> MlflowRecord:
        """The MLflow run this result is logged as (``harness.tracking.log_cell`` writes it)."""
        engine = self.environment.get("engine", {})
        tags = {**self.tags, "environment": json.dumps(self.environment)}
        if self.error:
            tags["error"] = self.error[:MAX_PARAM_LENGTH]
        artifacts = {
            "config.yaml": yaml.safe_dump(self.config, sort_keys=False),
            CELL_RESULT_ARTIFACT: dataclasses.replace(self, per_image=None, predictions=None).to_json(),
            "training_curve.json": json.dumps(_finite_or_none(self.history)),
        }
        if self.per_class:
            artifacts["per_class.csv"] = _per_class_csv(self.per_class)
        if self.per_image:
            artifacts[PER_IMAGE_ARTIFACT] = json.dumps(self.per_image, separators=(",", ":"))
        if self.predictions:
            artifacts[PREDICTIONS_ARTIFACT] = json.dumps(self.predictions, separators=(",", ":"))
        if self.diagnostics:
            artifacts[DIAGNOSTICS_ARTIFACT] = json.dumps(_finite_or_none(self.diagnostics))
        if self.measurement:
            artifacts["measurement.json"] = json.dumps(_finite_or_none(self.measurement), indent=2)
        if self.error:
            artifacts["traceback.txt"] = self.traceback or ""
        return MlflowRecord(
            status=self.status, tags=tags,
            # How it trained (workers, accumulation, precision, SyncBN as resolved): said, never its identity.
            params={**config_params(self.config), **{f"{ENGINE_PARAM_PREFIX}{k}": str(v) for k, v in engine.items()}},
            metrics={metric_name(k): float(v) for k, v in self.metrics.items() if is_finite(v)},
            series={f"curve/{k}": [(row["iteration"], float(row[k])) for row in self.history if is_finite(row.get(k))]
                    for k in dict.fromkeys(k for row in self.history for k in row if k != "iteration")},
            artifacts=artifacts)

    @classmethod
    def from_mlflow(cls, record: MlflowRecord, where: str = "MLflow run") -> CellResult:
        """The result a run holds: its ``cell_result.json`` with its ``per_image_counts.json`` and
        ``sample_predictions.json`` when given."""
        if CELL_RESULT_ARTIFACT not in record.artifacts:
            raise InputError(f"{where}: has no {CELL_RESULT_ARTIFACT} (not a segheads cell, or its logging was cut)")
        result = cls.from_json(record.artifacts[CELL_RESULT_ARTIFACT], f"{where}: {CELL_RESULT_ARTIFACT}")
        counts, predictions = record.artifacts.get(PER_IMAGE_ARTIFACT), record.artifacts.get(PREDICTIONS_ARTIFACT)
        return dataclasses.replace(result, per_image=json.loads(counts) if counts else None,
                                   predictions=json.loads(predictions) if predictions else None)


@dataclass
class MlflowRecord:
    """A ``CellResult`` as MLflow holds it: the run's ``status``, ``tags``, ``params`` (the resolved
    config flattened without the measurement settings, ``config_params``, and ``engine.*``),
    ``metrics`` (finite, at step 0, under ``metric_name``s), ``series`` (the training curve,
    ``curve/<column>`` -> [(iteration, value)]) and text ``artifacts`` by file name."""

    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    series: dict[str, list[tuple[int, float]]]
    artifacts: dict[str, str]


def read_results(path: str | Path) -> dict[str, CellResult]:
    """The last result of each cell in a ``results.jsonl``, by ``config_hash``, in the order of
    those last lines. Each line's ``config_hash`` is computed again from its config (a line
    written before the hash left out the measurement settings keeps its old one as
    ``config_hash_v1``). A torn last line (a writer killed mid-write) is ignored here and set
    aside by the next append; any other bad line is an ``InputError``."""
    path = Path(path)
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    results = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise InputError(f"{path}:{number}: not a JSON cell result") from None
        try:
            result = CellResult.from_dict(data, f"{path}:{number}")
            digest = config_hash(from_dict(RunConfig, result.config))
        except (InputError, TypeError) as exc:
            raise InputError(f"{path}:{number}: not a cell result with a valid config ({exc})") from None
        results.pop(digest, None)
        results[digest] = result.rehashed(digest)
    return results


def metric_name(key: str) -> str:
    """``key`` as an MLflow metric name: characters MLflow refuses (detectron2's ADE20K classes
    have commas, ``IoU-road, route``) become ``_``; ``per_class.csv`` keeps the names as they are."""
    return _NOT_IN_METRIC_NAMES.sub("_", key)


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (metrics read back from JSON hold None for the others)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _per_class_csv(per_class: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", "IoU", "ACC"])
    writer.writerows(zip(per_class["class"], per_class["IoU"], per_class["ACC"]))
    return buffer.getvalue()
