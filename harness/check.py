"""``segheads check``: finished cells, from MLflow or a ``results.jsonl``, against a reference file.

A case's ``select`` picks cells by tag (``backbone``, ``classifier``, ``dataset``, ``seed``,
``neck``); a metric is averaged over the selected cells (several seeds). A ``NAME /
CLASSIFIER`` ratio divides by, and a ``NAME - CLASSIFIER`` difference subtracts, the same
average over the cells that match the same ``select`` with ``classifier`` replaced.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from harness.reference import Expectation, Reference


@dataclass(frozen=True)
class CheckRow:
    select: dict
    expectation: Expectation
    measured: float | None
    cells: int
    failure: str | None


def cells_from_results(path) -> list[dict]:
    """FINISHED cells of a ``results.jsonl`` (the last line of each cell)."""
    from harness.gridstore import read_results

    return [{"tags": r["tags"], "metrics": {k: v for k, v in r["metrics"].items() if v is not None}}
            for r in read_results(path).values() if r["status"] == "FINISHED"]


def cells_from_mlflow(experiment: str, tracking_uri: str | None = None) -> list[dict]:
    """FINISHED child runs (cells) of an MLflow experiment."""
    from harness.tracking import FINISHED_CELLS, experiment_id, open_client, resolve_tracking_uri, run_cells, search_all_runs

    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    return run_cells(search_all_runs(client, [experiment_id(client, experiment, uri)], FINISHED_CELLS))


def _selected(cells: list[dict], select: dict) -> list[dict]:
    return [c for c in cells if all(str(c["tags"].get(k)) == str(v) for k, v in select.items())]


def _mean(cells: list[dict], metric: str) -> float | None:
    values = [c["metrics"][metric] for c in cells if metric in c["metrics"]]
    return statistics.fmean(values) if values else None


def check(reference: Reference, cells: list[dict]) -> list[CheckRow]:
    """One row per expectation of every case; ``failure`` is None where it holds."""
    rows = []
    for case in reference.cases:
        chosen = _selected(cells, case.select)
        for expectation in case.expect:
            if not chosen:
                rows.append(CheckRow(case.select, expectation, None, 0, f"no FINISHED cell matches {case.select}"))
                continue
            measured = _mean(chosen, expectation.metric)
            if expectation.relative_to is not None:
                metric, operator, classifier = expectation.relative_to
                partners = _selected(cells, {**case.select, "classifier": classifier})
                measured = _combine(_mean(chosen, metric), operator, _mean(partners, metric))
            values = {} if measured is None else {expectation.metric: measured}
            rows.append(CheckRow(case.select, expectation, measured, len(chosen), expectation.failure(values)))
    return rows


def _combine(value: float | None, operator: str, partner: float | None) -> float | None:
    """``value / partner`` or ``value - partner``; None when either is missing (or a zero divisor)."""
    if value is None or partner is None:
        return None
    if operator == "/":
        return value / partner if partner else None
    return value - partner


def format_rows(reference: Reference, rows: list[CheckRow]) -> str:
    """The readable diff ``segheads check`` prints: every expectation, FAIL rows first."""
    failed = [r for r in rows if r.failure]
    lines = [f"{reference.name}: {len(rows) - len(failed)} of {len(rows)} expectations hold"
             + (f", {len(failed)} FAIL" if failed else "")]
    for row in sorted(rows, key=lambda r: r.failure is None):
        where = " ".join(f"{k}={v}" for k, v in row.select.items())
        measured = f"{row.measured:.6g}" if row.measured is not None else "-"
        lines.append(f"  {'FAIL' if row.failure else 'ok':<4}  {where:<48} {row.expectation.metric:<34} "
                     f"measured {measured:<12} expected {row.expectation.wanted}"
                     + (f"  ({row.failure})" if row.failure and row.measured is None else ""))
    return "\n".join(lines)
