"""Finished cells as ``report``, ``check`` and the grid's table read them (``read_cells``, from
MLflow or a ``results.jsonl``; ``Cell.from_result`` for results in memory), grouped into
configurations and compared with one definition of the baseline.

- A **configuration** is the cells whose resolved configs are equal in everything but
  ``train.seed`` (``harness.config.seedless_settings`` of their params): only its seeds are
  averaged. Configurations that share dataset, backbone, neck and classifier are told apart
  by the settings that differ between them (``softmax [train.lr=0.01]``); with ``latest``
  only the newest of them is kept and its label says so (``softmax (newest of 2)``).
- The **baseline** of a configuration is a ``softmax`` configuration (or another
  classifier's, for a check's ``NAME - CLASSIFIER``) on the same dataset and backbone: on
  the same neck when there is one, otherwise on any neck the cells have (ECENet's
  ``stages`` against DeepLabV3+ or UperNet); among several, the one whose settings differ
  least, then the newest. A configuration and its baseline are compared on the seeds they
  share, each seed paired with the same seed (``paired_seeds``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import config_params, seedless_settings
from harness.errors import InputError
from harness.evaluation import DIAGNOSTIC_PREFIX
from harness.results import CellResult, read_results
from harness.tracking import finished_runs, open_client, read_diagnostics, read_per_image_counts, resolve_tracking_uri

TAGS = ("dataset", "backbone", "neck", "classifier")
BASELINE = "softmax"


@dataclass
class Cell:
    """One FINISHED cell: its tags, metrics, seed-free settings (``seedless_settings``), MLflow
    run (None from a ``results.jsonl``), per-image evaluation counts (None for runs logged
    before they existed), its head's diagnostics (``CellResult.diagnostics``), ``order``,
    larger for newer cells, and its predictions of the sample images (``CellResult.predictions``;
    from MLflow, read when the report first asks)."""

    tags: dict[str, str]
    metrics: dict[str, float]
    settings: dict[str, str]
    run_id: str | None = None
    per_image: list | None = None
    order: float = 0.0
    diagnostics: dict | None = None
    predictions: dict | None = None

    @property
    def seed(self) -> int:
        return int(self.tags["seed"])

    @classmethod
    def from_run(cls, run) -> Cell:
        """A cell from an MLflow ``Run`` (its settings from the run's params)."""
        return cls(dict(run.data.tags), dict(run.data.metrics), seedless_settings(dict(run.data.params)),
                   run.info.run_id, order=float(run.info.start_time or 0))

    @classmethod
    def from_result(cls, result: CellResult, order: float = 0.0) -> Cell:
        """A cell from a ``CellResult`` (a ``results.jsonl`` line, or one a grid holds)."""
        metrics = {k: v for k, v in result.metrics.items() if v is not None}
        return cls(dict(result.tags), metrics, seedless_settings(config_params(result.config)),
                   per_image=result.per_image, order=order, diagnostics=result.diagnostics,
                   predictions=result.predictions)


@dataclass
class Configuration:
    """The cells of one configuration, by seed (the newest cell of each seed)."""

    dataset: str
    backbone: str
    neck: str
    classifier: str
    settings: dict[str, str]
    cells: dict[int, Cell] = field(default_factory=dict)
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted(self.cells)

    @property
    def newest(self) -> float:
        return max(cell.order for cell in self.cells.values())

    def values(self, metric: str, seeds: list[int] | None = None) -> list[float]:
        """``metric`` of each of ``seeds`` (default all) that has it."""
        chosen = (self.cells[s] for s in (self.seeds if seeds is None else seeds))
        return [cell.metrics[metric] for cell in chosen if cell.metrics.get(metric) is not None]

    def mean(self, metric: str, seeds: list[int] | None = None) -> float | None:
        return mean(self.values(metric, seeds))


def mean(values: list[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def read_cells(results: str | Path | None = None, experiment: str | None = None, parent_run_id: str | None = None,
               tracking_uri: str | None = None, per_image: bool = False) -> tuple[str, list[Cell]]:
    """(name, FINISHED cells) of one source: a ``results.jsonl`` (its last line per cell; named by
    its folder), one grid's parent run (named by the run) or an MLflow experiment; ``per_image``
    reads each run's per-image counts too (a ``results.jsonl`` line always has them), and a run
    with ``diag/`` metrics has its head's diagnostics read."""
    if results is not None:
        lines = read_results(results).values()
        return Path(results).parent.name, [Cell.from_result(r, order) for order, r in enumerate(lines) if r.finished]
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    name = experiment
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:
            raise InputError(f"--parent {parent_run_id!r}: no such run in {uri}") from None
        name = parent.data.tags.get("mlflow.runName", parent_run_id)
        experiment = client.get_experiment(parent.info.experiment_id).name
    cells = [Cell.from_run(run) for run in finished_runs(client, experiment, uri, parent_run_id)]
    for cell in cells:
        if per_image:
            cell.per_image = read_per_image_counts(cell.run_id, uri)
        if any(name.startswith(DIAGNOSTIC_PREFIX) for name in cell.metrics):
            cell.diagnostics = read_diagnostics(cell.run_id, uri)
    return name, cells


def _differing(settings: list[dict[str, str]]) -> list[str]:
    """Keys whose value (or presence) is not the same in every one of ``settings``."""
    keys = sorted(set().union(*settings))
    return [k for k in keys if len({s.get(k) for s in settings}) > 1]


def configurations(cells: list[Cell], latest: bool = False) -> list[Configuration]:
    """``cells`` grouped into configurations, sorted by dataset, backbone, neck, classifier,
    then label; with ``latest``, only the newest configuration of each dataset x backbone x
    neck x classifier."""
    groups: dict[tuple, dict[tuple, Configuration]] = defaultdict(dict)
    for cell in sorted(cells, key=lambda c: c.order):
        tags = tuple(cell.tags[k] for k in TAGS)
        family = tuple(sorted(cell.settings.items()))
        config = groups[tags].setdefault(family, Configuration(*tags, settings=cell.settings))
        config.cells[cell.seed] = cell  # newest wins
    chosen = []
    for tags, family in groups.items():
        configs = list(family.values())
        differing = _differing([c.settings for c in configs])
        for config in configs:
            shown = ", ".join(f"{k}={config.settings.get(k, '-')}" for k in differing)
            config.label = config.classifier + (f" [{shown}]" if shown else "")
        if latest and len(configs) > 1:
            newest = max(configs, key=lambda c: c.newest)
            newest.label += f" (newest of {len(configs)})"
            configs = [newest]
        chosen += configs
    return sorted(chosen, key=lambda c: (c.dataset, c.backbone, c.neck, c.classifier, c.label))


def baseline(config: Configuration, among: list[Configuration],
             classifier: str = BASELINE) -> Configuration | None:
    """The configuration ``config`` is compared with (module docstring); None for a
    ``classifier`` configuration itself, or when there is none."""
    if config.classifier == classifier:
        return None
    candidates = [c for c in among if c.classifier == classifier and c.dataset == config.dataset
                  and c.backbone == config.backbone]
    pool = [c for c in candidates if c.neck == config.neck] or candidates
    if not pool:
        return None
    return min(pool, key=lambda c: (len(_differing([c.settings, config.settings])), -c.newest))


def paired_seeds(config: Configuration, base: Configuration) -> list[int]:
    """The seeds both configurations ran, each compared with the same seed."""
    return sorted(set(config.cells) & set(base.cells))


def baseline_name(config: Configuration, base: Configuration) -> str:
    """How a row names its baseline: its label, and its neck where that differs."""
    return base.label + (f" on {base.neck}" if base.neck != config.neck else "")


def paired_difference(config: Configuration, base: Configuration, metric: str = "mIoU") -> float | None:
    """Mean over the paired seeds of ``metric``(config) - ``metric``(base); None without a
    seed that both have it for."""
    seeds = [s for s in paired_seeds(config, base)
             if config.cells[s].metrics.get(metric) is not None and base.cells[s].metrics.get(metric) is not None]
    if not seeds:
        return None
    return statistics.fmean(config.cells[s].metrics[metric] - base.cells[s].metrics[metric] for s in seeds)
