"""The regression check (``segheads check``): finished cells (``harness.report.read_cells``) against a reference file.

A case's ``select`` picks cells by tag (``backbone``, ``classifier``, ``dataset``, ``seed``,
``neck``); they must be seeds of one configuration (``harness.report.cells``), or, with
``latest``, the newest configuration of one dataset x backbone x neck x classifier: an
expectation that matches several fails and names them. A metric is averaged over the
configuration's selected seeds. A ``NAME / CLASSIFIER`` ratio divides by, and a ``NAME -
CLASSIFIER`` difference subtracts, the same average over the same seeds of the
configuration's baseline with that classifier (``harness.report.baseline``: the same neck
when it exists, otherwise the one the cells have).

Only cells that ran the case's recipe (``Recipe.admits``) are compared, baselines included. An
expectation either holds, fails, or is missing: no FINISHED cell matches the select, or none of
those that do ran the recipe (the row says how the nearest differs). Missing is not a pass:
``segheads check`` exits 1 on it unless ``--allow-missing``.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.check.reference import Expectation, Reference
from harness.report import Cell, Configuration, baseline, configurations, paired_seeds


@dataclass(frozen=True)
class CheckRow:
    """One expectation checked: ``failure`` is None where it holds; ``missing`` when no cell ran
    what it is about (then ``failure`` says why)."""

    select: dict
    expectation: Expectation
    measured: float | None
    cells: int
    failure: str | None
    missing: bool = False

    @property
    def verdict(self) -> str:
        return "held" if self.failure is None else "MISSING" if self.missing else "FAIL"


def _matches(cell: Cell, select: dict) -> bool:
    return all(str(cell.tags.get(k)) == str(v) for k, v in select.items())


def _measure(config: Configuration, select: dict, expectation: Expectation,
             configs: list[Configuration]) -> tuple[float | None, str | None]:
    """(the value ``expectation`` is checked on, why there is none)."""
    seeds = [s for s in config.seeds if _matches(config.cells[s], select)]
    if expectation.relative_to is None:
        return config.mean(expectation.metric, seeds), None
    metric, operator, classifier = expectation.relative_to
    base = baseline(config, configs, classifier)
    if base is None:
        return None, f"no {classifier} cell to compare {config.label} with"
    paired = set(paired_seeds(config, base))
    seeds = [s for s in seeds if s in paired]
    return _combine(config.mean(metric, seeds), operator, base.mean(metric, seeds)), None


def check(reference: Reference, cells: list[Cell], latest: bool = False) -> list[CheckRow]:
    """One row per expectation of every case (module docstring)."""
    rows = []
    for case in reference.cases:
        ran = [cell for cell in cells if case.recipe.admits(cell.tags, cell.settings)]
        configs = configurations(ran, latest)
        chosen = [c for c in configs if any(_matches(cell, case.select) for cell in c.cells.values())]
        count = sum(1 for c in chosen for cell in c.cells.values() if _matches(cell, case.select))
        for expectation in case.expect:
            if not chosen:
                rows.append(CheckRow(case.select, expectation, None, 0, _missing(case, cells), missing=True))
                continue
            if len(chosen) > 1:
                names = "; ".join(f"{c.label}@{c.backbone}/{c.neck} {c.dataset}" for c in chosen)
                rows.append(CheckRow(case.select, expectation, None, count,
                                     f"{case.select} matches cells of {len(chosen)} configurations ({names}); "
                                     "narrow the select, or pass --latest for the newest of each"))
                continue
            measured, why = _measure(chosen[0], case.select, expectation, configs)
            values = {} if measured is None else {expectation.metric: measured}
            rows.append(CheckRow(case.select, expectation, measured, count, why or expectation.failure(values)))
    return rows


def _missing(case, cells: list[Cell]) -> str:
    """Why no cell answers ``case``: none matches its select, or none of those ran its recipe."""
    selected = [cell for cell in cells if _matches(cell, case.select)]
    if not selected:
        return f"no FINISHED cell matches {case.select}"
    nearest = max(selected, key=lambda cell: cell.order)
    return (f"no cell ran this recipe ({case.recipe.describe()}); {len(selected)} cell(s) match the select, "
            f"the newest with {case.recipe.difference(nearest.tags, nearest.settings)}")


def _combine(value: float | None, operator: str, partner: float | None) -> float | None:
    """``value / partner`` or ``value - partner``; None when either is missing (or a zero divisor)."""
    if value is None or partner is None:
        return None
    if operator == "/":
        return value / partner if partner else None
    return value - partner


def format_rows(reference: Reference, rows: list[CheckRow]) -> str:
    """The readable diff ``segheads check`` prints: every expectation, FAIL rows first."""
    failed = [r for r in rows if r.failure and not r.missing]
    missing = [r for r in rows if r.missing]
    lines = [f"{reference.name}: {len(rows) - len(failed) - len(missing)} of {len(rows)} expectations hold"
             + (f", {len(failed)} FAIL" if failed else "") + (f", {len(missing)} MISSING" if missing else "")]
    for row in sorted(rows, key=lambda r: (r.failure is None, not r.missing)):
        where = " ".join(f"{k}={v}" for k, v in row.select.items())
        measured = f"{row.measured:.6g}" if row.measured is not None else "-"
        lines.append(f"  {row.verdict:<7}  {where:<48} {row.expectation.metric:<34} "
                     f"measured {measured:<12} expected {row.expectation.wanted}"
                     + (f"  ({row.failure})" if row.failure and row.measured is None else ""))
    return "\n".join(lines)
