"""Reference numbers (``jobs/reference/*.yaml``) and the comparison of measured numbers against them.

A reference file (safe-loaded YAML), in the spirit of detectron2's EXPECTED_RESULTS::

    name: protoseg_table4
    source: where the numbers come from (paper, table, column)
    cases:
      - select: {classifier: softmax, num_classes: 150, embed_dim: 768}   # which model / cell
        expect:
          - [params/head, 120000, 5000]      # [metric, value, tolerance]: |measured - value| <= 5000
          - [gmacs/total, 4.11, "2%"]        # a "N%" tolerance is relative to value
          - [mIoU, ">=", 40]                 # one-sided bounds: ">=" or "<="
          - [latency/bs1/p50_ms / softmax, "<=", 1.05]   # ratio to the softmax cell, same other tags
          - [mIoU - softmax, ">=", -10]      # difference to the softmax cell: at most 10 points under it

``select`` says which model or cell a case is about; what builds or finds it is the
caller's business (a test, ``segheads check``). A metric written ``NAME / CLASSIFIER`` is
NAME of the selected cell divided by NAME of the cell that differs only in having
classifier CLASSIFIER, ``NAME - CLASSIFIER`` the difference (``check`` computes both). Numbers are plain (YAML 1.1 reads ``1e6``
as a string; write ``1000000`` or ``1.0e+6``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.config import read_yaml
from harness.errors import InputError

_BOUNDS = ("<=", ">=")


@dataclass(frozen=True)
class Expectation:
    """``metric`` within ``value`` +- ``tolerance`` (relative: a fraction of ``value``), or,
    with ``bound`` "<=" / ">=", at most / at least ``value``."""

    metric: str
    value: float
    tolerance: float = 0.0
    relative: bool = False
    bound: str | None = None

    @property
    def allowed(self) -> float:
        return abs(self.value) * self.tolerance if self.relative else self.tolerance

    @property
    def wanted(self) -> str:
        if self.bound:
            return f"{self.bound} {self.value:g}"
        return f"{self.value:g} +- {self.tolerance * 100:g}%" if self.relative else f"{self.value:g} +- {self.tolerance:g}"

    @property
    def relative_to(self) -> tuple[str, str, str] | None:
        """(metric, "/" or "-", classifier) for a ``NAME / CLASSIFIER`` ratio or a
        ``NAME - CLASSIFIER`` difference, else None."""
        for operator in (" / ", " - "):
            name, sep, classifier = self.metric.rpartition(operator)
            if sep:
                return name.strip(), operator.strip(), classifier.strip()
        return None

    def failure(self, measured: dict[str, float]) -> str | None:
        """None when ``measured[metric]`` meets the expectation, else a one-line explanation."""
        if self.metric not in measured:
            return f"{self.metric}: not measured (expected {self.wanted})"
        got = measured[self.metric]
        slack = 1e-9 * max(abs(self.value), 1e-12)  # boundaries inclusive despite float rounding
        if self.bound == "<=":
            ok = got <= self.value + slack
        elif self.bound == ">=":
            ok = got >= self.value - slack
        else:
            ok = abs(got - self.value) <= self.allowed * (1 + 1e-9)
        if math.isfinite(got) and ok:
            return None
        return f"{self.metric}: measured {got:g}, expected {self.wanted} (off by {got - self.value:+g})"


@dataclass(frozen=True)
class ReferenceCase:
    select: dict
    expect: tuple[Expectation, ...]

    def failures(self, measured: dict[str, float]) -> list[str]:
        return [message for e in self.expect if (message := e.failure(measured)) is not None]


@dataclass(frozen=True)
class Reference:
    name: str
    source: str
    cases: tuple[ReferenceCase, ...] = field(default_factory=tuple)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _expectation(entry, where: str) -> Expectation:
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
        raise InputError(f"{where}: expected [metric, value, tolerance] or [metric, '<=' or '>=', bound], "
                         f"got {entry!r}")
    metric, value, tolerance = entry
    if value in _BOUNDS:
        return Expectation(metric, _number(tolerance, f"{where} bound"), bound=value)
    relative = isinstance(tolerance, str)
    if relative:
        if not tolerance.endswith("%"):
            raise InputError(f"{where}: tolerance {tolerance!r}; expected a number or a percentage such as '2%'")
        tolerance = _number(yaml.safe_load(tolerance[:-1]), f"{where} tolerance") / 100
    tolerance = _number(tolerance, f"{where} tolerance")
    if tolerance < 0:
        raise InputError(f"{where}: tolerance {tolerance:g}; expected >= 0")
    return Expectation(metric, _number(value, f"{where} value"), tolerance, relative)


def load_reference(path: str | Path) -> Reference:
    """Parse and validate a reference file; ``InputError`` naming the file and the entry otherwise."""
    path = Path(path)
    data = read_yaml(path, "reference file")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
        raise InputError(f"{path}: expected a mapping with name, source and a non-empty list 'cases'")
    unknown = set(data) - {"name", "source", "cases"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, source, cases")
    cases = []
    for i, case in enumerate(data["cases"]):
        where = f"{path}: cases[{i}]"
        if not isinstance(case, dict) or set(case) != {"select", "expect"} or not isinstance(case["select"], dict):
            raise InputError(f"{where}: expected a mapping with exactly 'select' (mapping) and 'expect' (list)")
        if not isinstance(case["expect"], list) or not case["expect"]:
            raise InputError(f"{where}.expect: expected a non-empty list of [metric, value, tolerance]")
        expect = tuple(_expectation(e, f"{where}.expect[{j}]") for j, e in enumerate(case["expect"]))
        cases.append(ReferenceCase(dict(case["select"]), expect))
    return Reference(str(data.get("name", path.stem)), str(data.get("source", "")), tuple(cases))
