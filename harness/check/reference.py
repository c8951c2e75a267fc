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
caller's business (a test, ``segheads check``). A reference of trained cells pins the
``recipe`` its numbers hold for, for every case (a case may add its own, merged over it)::

    recipe:
      spec: jobs/papers/protoseg_table1_ade20k.yaml   # exactly the cells this spec expands to (config_hash)
      train.iters: 160000                             # and/or config keys a cell must have, as the config says
      config_hash: 0123456789abcdef                   # or one cell

``segheads check`` compares only cells that ran the recipe: a 4-iteration grid's softmax is
"no cell ran this recipe", never compared with a paper's number. A ``spec`` path is relative to
the working directory, else to a folder above the reference file. A metric written ``NAME / CLASSIFIER`` is
NAME of the selected cell divided by NAME of the cell that differs only in having
classifier CLASSIFIER, ``NAME - CLASSIFIER`` the difference (``check`` computes both). Numbers are plain (YAML 1.1 reads ``1e6``
as a string; write ``1000000`` or ``1.0e+6``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.config import config_hash, config_params, read_yaml, seedless_settings, to_dict
from harness.errors import InputError
from harness.grid.spec import expand, load_grid
from harness.report.cells import TAGS

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
class Recipe:
    """What a cell must have run for a case to compare it: one of the cells ``spec`` expands to
    (``spec_cells``: config_hash -> (tags, seed-free settings)), the config ``fields`` (flattened
    key -> value as the settings hold it), ``config_hash``. Empty: any cell."""

    spec: str | None = None
    spec_cells: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    config_hash: str | None = None

    def describe(self) -> str:
        parts = ([f"spec {self.spec}"] if self.spec else []) + [f"{k}={v}" for k, v in self.fields.items()]
        return ", ".join(parts + ([f"config_hash {self.config_hash}"] if self.config_hash else [])) or "any"

    def admits(self, tags: dict, settings: dict) -> bool:
        """Whether a cell with ``tags`` and seed-free ``settings`` ran this recipe."""
        digest = tags.get("config_hash")
        return ((not self.spec or digest in self.spec_cells) and (not self.config_hash or digest == self.config_hash)
                and all(settings.get(k) == v for k, v in self.fields.items()))

    def difference(self, tags: dict, settings: dict) -> str:
        """How a cell that did not run this recipe differs from it (a few settings), for a message."""
        wanted = dict(self.fields)
        same = [s for t, s in self.spec_cells.values() if all(t.get(k) == tags.get(k) for k in TAGS)]
        if same:
            wanted = {**same[0], **wanted}
        off = [f"{k}={settings.get(k, '-')} (recipe {v})" for k, v in wanted.items() if settings.get(k) != v]
        if off:
            return ", ".join(off[:3]) + (f" and {len(off) - 3} more" if len(off) > 3 else "")
        return "another config_hash"


@dataclass(frozen=True)
class ReferenceCase:
    select: dict
    expect: tuple[Expectation, ...]
    recipe: Recipe = field(default_factory=Recipe)

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


def _spec_path(spec, reference: Path, where: str) -> Path:
    if not isinstance(spec, str):
        raise InputError(f"{where}.spec: expected a grid spec path, got {spec!r}")
    for base in (Path.cwd(), *reference.resolve().parents):
        if (base / spec).is_file():
            return base / spec
    raise InputError(f"{where}.spec: {spec} not found (from the working directory or a folder above {reference})")


def _recipe(data, reference: Path, where: str, specs: dict) -> dict:
    """A recipe mapping checked; ``spec`` read and expanded once per file (``specs``, by the path as written)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping (spec, config keys, config_hash), got {data!r}")
    if "train.seed" in data:
        raise InputError(f"{where}: train.seed is the select's business (seed: N), not the recipe's")
    recipe = dict(data)
    spec = recipe.get("spec")
    if spec is not None and (not isinstance(spec, str) or spec not in specs):
        cells = expand(load_grid(_spec_path(spec, reference, where)))
        specs[spec] = {config_hash(cfg): (dict(zip(TAGS, (cfg.data.dataset, cfg.model.backbone, cfg.model.neck,
                                                          cfg.model.classifier))),
                                          seedless_settings(config_params(to_dict(cfg)))) for cfg in cells}
    return recipe


def _build_recipe(data: dict, specs: dict) -> Recipe:
    data = dict(data)
    spec, digest = data.pop("spec", None), data.pop("config_hash", None)
    cells = specs[spec] if spec else {}
    return Recipe(spec, cells, {k: str(v) for k, v in data.items()}, None if digest is None else str(digest))


def load_reference(path: str | Path) -> Reference:
    """Parse and validate a reference file; ``InputError`` naming the file and the entry otherwise."""
    path = Path(path)
    data = read_yaml(path, "reference file")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
        raise InputError(f"{path}: expected a mapping with name, source and a non-empty list 'cases'")
    unknown = set(data) - {"name", "source", "recipe", "cases"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, source, recipe, cases")
    specs: dict = {}
    shared = _recipe(data.get("recipe", {}), path, f"{path}: recipe", specs)
    cases = []
    for i, case in enumerate(data["cases"]):
        where = f"{path}: cases[{i}]"
        if (not isinstance(case, dict) or not {"select", "expect"} <= set(case) <= {"select", "expect", "recipe"}
                or not isinstance(case["select"], dict)):
            raise InputError(f"{where}: expected a mapping with 'select' (mapping), 'expect' (list) and, "
                             "optionally, 'recipe' (mapping)")
        if not isinstance(case["expect"], list) or not case["expect"]:
            raise InputError(f"{where}.expect: expected a non-empty list of [metric, value, tolerance]")
        expect = tuple(_expectation(e, f"{where}.expect[{j}]") for j, e in enumerate(case["expect"]))
        recipe = {**shared, **_recipe(case.get("recipe", {}), path, f"{where}.recipe", specs)}
        cases.append(ReferenceCase(dict(case["select"]), expect, _build_recipe(recipe, specs)))
    return Reference(str(data.get("name", path.stem)), str(data.get("source", "")), tuple(cases))
