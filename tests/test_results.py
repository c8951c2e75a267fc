"""``CellResult``'s stored forms, on real cells (the ``logged_cells`` fixture: three tiny cells trained,
measured, written to a ``results.jsonl`` and logged to a real MLflow SQLite store): a ``results.jsonl``
line and an MLflow run both give back the result that was written, and the one reader
(``harness.report.read_cells``) sees the same cells in either."""

import dataclasses
import json
import re

import pytest

from harness.config import config_params
from harness.errors import InputError
from harness.report import read_cells
from harness.results import CellResult, is_finite, metric_name, read_results
from harness.tracking import finished_runs, open_client, read_result


def _stored(value):
    """``value`` as JSON stores it: non-finite floats are null (the documented loss)."""
    return json.loads(re.sub(r"-?Infinity|NaN", "null", json.dumps(value)))


def _as_stored(result: CellResult) -> CellResult:
    return CellResult(**{f.name: _stored(getattr(result, f.name)) for f in dataclasses.fields(result)})


def _cases(results: list[CellResult]) -> list[CellResult]:
    """The real cells, and one with what JSON cannot hold (a class absent from the validation set
    has a NaN IoU; a diverged row an inf loss), so that the round trips are not vacuous."""
    first = results[0]
    assert all(r.measurement is not None and r.per_image and r.history for r in results)
    nan = dataclasses.replace(first, metrics={**first.metrics, "IoU-absent": float("nan")},
                              history=[*first.history, {"iteration": 99, "loss/total": float("inf")}])
    return [*results, nan]


def test_a_cell_result_round_trips_through_json(logged_cells):
    for result in _cases(logged_cells[3]):
        back = CellResult.from_json(result.to_json())
        assert back == _as_stored(result)
        assert CellResult.from_json(back.to_json(indent=None)) == back  # stable once stored
        assert set(json.loads(result.to_json())) == {"status", "config", "config_hash", "tags", "metrics", "per_class",
                                                     "history", "per_image", "environment", "measurement",
                                                     "predictions"}


def test_a_cell_result_round_trips_through_its_mlflow_record(logged_cells):
    for result in _cases(logged_cells[3]):
        record = result.to_mlflow()
        assert CellResult.from_mlflow(record) == _as_stored(result)
        assert record.status == "FINISHED" and record.tags["config_hash"] == result.config_hash
        engine = {f"engine.{k}": str(v) for k, v in result.environment["engine"].items()}
        assert record.params == {**config_params(result.config), **engine}
        assert record.metrics == {metric_name(k): v for k, v in result.metrics.items() if is_finite(v)}
        losses = [row["loss/total"] for row in result.history if is_finite(row.get("loss/total"))]
        assert [value for _, value in record.series["curve/loss/total"]] == losses
        assert json.loads(record.artifacts["cell_result.json"])["per_image"] is None  # in its own artifact
        stored = json.loads(record.artifacts["cell_result.json"])
        assert "predictions" not in stored and json.loads(record.artifacts["sample_predictions.json"]) == result.predictions
        assert json.loads(record.artifacts["measurement.json"]) == _stored(result.measurement)


def test_a_logged_cell_reads_back_from_the_real_store(logged_cells):
    _, _, uri, results, _ = logged_cells
    by_hash = {r.config_hash: r for r in results}
    runs = finished_runs(open_client(uri), "checked", uri)
    assert len(runs) == len(results)
    for run in runs:
        written = by_hash[run.data.tags["config_hash"]]
        assert read_result(run.info.run_id, uri) == _as_stored(written)
        finite = {metric_name(k): v for k, v in written.metrics.items() if is_finite(v)}
        assert {k: run.data.metrics[k] for k in finite} == pytest.approx(finite)


def test_the_one_reader_sees_the_same_cells_in_mlflow_and_results_jsonl(logged_cells):
    folder, jsonl, uri, _, parent = logged_cells
    _, from_lines = read_cells(jsonl)
    name, from_runs = read_cells(experiment="checked", tracking_uri=uri, per_image=True)
    parent_name, from_parent = read_cells(parent_run_id=parent, tracking_uri=uri)
    assert name == "checked" and parent_name == "checked" and len(from_parent) == 3

    def key(cell):
        return cell.tags["config_hash"]

    assert sorted(map(key, from_lines)) == sorted(map(key, from_runs)) == sorted(map(key, from_parent))
    for line, run in zip(sorted(from_lines, key=key), sorted(from_runs, key=key)):
        assert line.settings == run.settings and line.per_image == run.per_image
        named = {metric_name(k): v for k, v in line.metrics.items()}
        assert named == pytest.approx({k: run.metrics[k] for k in named})
        assert all(k.startswith("curve/") for k in set(run.metrics) - set(named))  # the run's training curve
        assert {k: line.tags[k] for k in ("dataset", "backbone", "neck", "classifier", "seed")} == \
            {k: run.tags[k] for k in ("dataset", "backbone", "neck", "classifier", "seed")}


def test_bad_results_lines_name_the_file_line_and_key(logged_cells, tmp_path):
    good = logged_cells[3][0].to_json(indent=None)
    path = tmp_path / "results.jsonl"
    path.write_text(good + "\n" + good[: len(good) // 2])  # a torn last line: ignored
    assert list(read_results(path)) == [logged_cells[3][0].config_hash]
    for line, wanted in ((json.dumps({**json.loads(good), "colour": 1}), "unknown key 'colour'"),
                         (json.dumps({"status": "FINISHED"}), "missing key 'config'"),
                         ("[1, 2]", "expected a mapping")):
        path.write_text(line + "\n" + good + "\n")
        with pytest.raises(InputError, match=rf"{path}:1: .*{wanted}"):
            read_results(path)
