"""A grid in numbers and text: the ``dry_run`` listing of its cells, ``GridOutcome``, the scheduling
``overhead`` and the ``comparison_table`` printed after a grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import metric_keys as keys
from harness.config import config_hash
from harness.data import missing_splits
from harness.data.builtin import datasets_root
from harness.grid.spec import GridSpec, describe, expand, start_order, validate_cells
from harness.modeling import describe_weights
from harness.report import Cell, baseline, baseline_name, configurations
from harness.results import CellResult, read_results
from harness.tracking import resolve_trunks


@dataclass
class GridOutcome:
    results: list[CellResult]    # one per cell of the spec, in expansion order
    ran_hashes: list[str]        # config_hash of the cells run now (the rest were already FINISHED)
    wall_seconds: float          # of this invocation's running phase
    slots: int                   # the most cells that trained at once
    parent_run_id: str | None
    unlogged: int = 0            # results written to results.jsonl only (tracking store off or failed)
    results_path: Path | None = None
    measure_nodes: int = 1       # nodes measurements ran on, one at a time each

    @property
    def ran(self) -> int:
        return len(self.ran_hashes)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if not r.finished]


def overhead(outcome: GridOutcome) -> dict[str, float]:
    """How much of this invocation's wall time was not cell work: wall time over the ideal
    (the cells' training seconds / slots + their measurement seconds / measurement nodes,
    since a measurement holds its whole node), and the idle slot-seconds per cell
    (scheduling, worker start-up, result transfer, logging, waiting for the last cell)."""
    ran = [r for r in outcome.results if r.config_hash in set(outcome.ran_hashes)]
    if not ran or not outcome.slots:
        return {}
    training = sum(r.seconds or 0.0 for r in ran)
    measuring = sum(r.measure_seconds or 0.0 for r in ran)
    ideal = training / outcome.slots + measuring / max(1, outcome.measure_nodes)
    if not ideal:
        return {}
    return {"wall_over_ideal": outcome.wall_seconds / ideal, "measure_seconds": measuring,
            "idle_seconds_per_cell": (outcome.wall_seconds - ideal) * outcome.slots / len(ran)}


def comparison_table(results: list[CellResult]) -> str:
    """One row per cell: mIoU and its delta over the same seed of its baseline
    (``harness.report.baseline``: softmax on the same backbone, on the same neck where the grid
    has one; named in the last column), head parameters, GFLOPs, latency p50 at the first
    measured batch size, training time."""
    finished = {id(r): Cell.from_result(r, order) for order, r in enumerate(results) if r.finished}
    configs = configurations(list(finished.values()))
    config_of = {id(cell): config for config in configs for cell in config.cells.values()}
    header = (f"{'dataset':<16}{'backbone':<18}{'neck':<14}{'classifier':<11}{'seed':>5} {'status':<9}{'mIoU':>7}"
              f"{'vs base':>9}{'head params':>12}{'GFLOPs':>8}{'p50 ms':>9}{'train s':>9}  baseline")
    lines = [header, "-" * len(header)]
    for r in results:
        t, m = r.tags, r.metrics
        miou, delta, named = m.get("mIoU"), "", ""
        cell = finished.get(id(r))
        config = config_of.get(id(cell)) if cell is not None else None
        base = baseline(config, configs) if config is not None else None
        if base is not None and int(t["seed"]) in base.cells and miou is not None:
            delta = f"{miou - base.cells[int(t['seed'])].metrics['mIoU']:+.2f}"
            named = baseline_name(config, base)
        measurement = r.measurement or {}
        batch = (measurement.get("measured_batch_sizes") or measurement.get("settings", {}).get("batch_sizes") or [1])[0]
        p50 = m.get(keys.latency(batch))
        lines.append(
            f"{t['dataset']:<16}{t['backbone']:<18}{t['neck']:<14}{t['classifier']:<11}{t['seed']:>5} {r.status:<9}"
            + (f"{miou:>7.2f}" if miou is not None else f"{'-':>7}") + f"{delta:>9}"
            + (f"{m[head]:>12,}" if (head := keys.params("head")) in m else f"{'-':>12}")
            + (f"{m[keys.gflops()]:>8.2f}" if keys.gflops() in m else f"{'-':>8}")
            + (f"{p50:>9.1f}" if p50 is not None else f"{'-':>9}")
            + (f"{m[keys.TRAIN_SECONDS]:>9.0f}" if keys.TRAIN_SECONDS in m else f"{'-':>9}") + f"  {named}".rstrip())
        if not r.finished:
            lines.append(f"{'':<4}error: {r.error or 'unknown'}")
    return "\n".join(lines)


DEFAULT_GPU_TFLOPS = 50.0  # the dry run's throughput assumption: sustained TFLOP/s of one GPU in training


def dry_run(spec: GridSpec, tracking_uri: str | None = None, results_path: str | Path | None = None,
            gpu_tflops: float = DEFAULT_GPU_TFLOPS) -> str:
    """What ``segheads grid --dry-run`` prints: the resources of each cell, then every cell in the
    order the grid starts them (``start_order``: costliest first) with its ``config_hash``,
    iterations, threads, estimated training cost (and, for GPU cells, GPU-hours at ``gpu_tflops``
    sustained per GPU, an assumption the output states), whether the grid's ``results.jsonl``
    (default ``outputs/<name>/results.jsonl``) has it FINISHED, test protocol(s) and initial
    weights (a trunk's weights are read for their digest, nothing is written), and the datasets whose
    folders this machine lacks (``harness.data.missing_splits``)."""
    cells = resolve_trunks(expand(spec), tracking_uri, None)
    validate_cells(cells, spec.resources.workers)
    ordered, unordered = start_order(cells)
    results = Path(results_path or Path("outputs") / spec.name / "results.jsonl")
    finished = {h for h, r in read_results(results).items() if r.finished}
    r = spec.resources
    gpus = r.gpus * r.workers
    hours = {config_hash(cfg): flops / (gpu_tflops * 1e12) / 3600 for cfg, flops in ordered if flops is not None}
    lines = [f"grid {spec.name!r}: {len(cells)} cells; per cell {r.workers} worker(s) x {r.cpus:g} CPU, "
             f"{r.gpus:g} GPU (training), "
             f"{r.measure_cpus:g} CPU, {r.measure_gpus:g} GPU (measurement, holding its whole node); "
             f"{r.retries} retries on lost workers"
             + (f"; memory {r.memory_gb:g} GB per task, capped" if r.memory_gb else ""),
             f"cells in the spec's order ({unordered})" if unordered else
             "cells in the order they start: costliest first by estimated training FLOPs"]
    if gpus and hours:
        todo = sum(h for digest, h in hours.items() if digest not in finished)
        lines.append(f"GPU-hours at {gpu_tflops:g} TFLOP/s sustained per GPU (an assumption; --gpu-tflops sets it): "
                     f"{sum(hours.values()):.3g} in all, {todo:.3g} still to run ({gpus:g} GPU(s) per cell)")
    for dataset in dict.fromkeys(cfg.data.dataset for cfg in cells):
        missing = missing_splits(dataset)
        if missing:
            lines.append(f"dataset {dataset} not on this machine ($DETECTRON2_DATASETS={datasets_root()}): "
                         f"{', '.join(missing)}; `segheads prepare-data` makes it, on every node that trains its cells")
    if finished:
        lines.append(f"{sum(config_hash(cfg) in finished for cfg in cells)} of {len(cells)} cells already FINISHED "
                     f"in {results} (a run skips them)")
    for cfg, flops in ordered:
        digest = config_hash(cfg)
        cost = "" if flops is None else f" train~{_flop_text(flops)}"
        cost += f" ~{hours[digest]:.3g} GPU-h" if gpus and digest in hours else ""
        lines.append(f"  {digest}  {describe(cfg)}  iters={cfg.train.iters} threads={cfg.train.threads}"
                     f"{cost}{'  FINISHED' if digest in finished else ''}\n      eval: {cfg.eval.describe_all()}\n      weights: "
                     + (cfg.trunk.describe() if cfg.trunk.enabled else describe_weights(cfg.model.backbone_kwargs))
                     + "".join(f"\n      plugin: {module} ({stamp})" for module, stamp in cfg.plugins.items()))
    return "\n".join(lines)


def _flop_text(flops: float) -> str:
    """FLOPs in the largest unit that keeps the number at least 1: ``4.6 EFLOP``."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops / 1e9:.3g} GFLOP"
