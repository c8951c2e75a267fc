"""Running a grid: Ray Tune schedules the cells still to run, one trial each, whenever the cluster
has room for one (nodes an autoscaler adds included; ``--max-concurrent`` caps how many run at
once; ``FailureConfig`` retries a lost trial). This process is the only MLflow writer: its Tune
callback, ``GridDriver``, opens each cell's child run when the cell starts, logs its training rows
as they come, records the cell (FINISHED with its mIoU and weights, or FAILED) as soon as it has
trained, and then has its cost measured by a task that holds a whole node, added to the same run.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

import ray
from ray import tune

from harness.config import RunConfig, config_hash, from_dict, to_dict
from harness.engine import cell_tags, failed_result, init_ray, needs_ray_train, resolve_storage, trained_cell
from harness.errors import InputError, one_line
from harness.grid.progress import Progress
from harness.grid.spec import GridSpec, Resources, describe, expand, start_order, validate_cells
from harness.grid.store import GridStore
from harness.grid.table import GridOutcome
from harness.grid.tasks import REPORT_FAILED, REPORT_TRAINED, measure_task, train_trial
from harness.logs import logger
from harness.modeling import missing_weights, uncached_builtin_weights
from harness.results import CellResult
from harness.tracking import TRUNKS, resolve_trunks


def run_grid(spec: GridSpec, tracking_uri: str | None = None, address: str | None = None,
             max_concurrent: int | None = None, results_path: str | Path | None = None,
             tracking: bool = True, storage: str | Path | None = None) -> GridOutcome:
    """Run every cell of ``spec`` not already FINISHED (in MLflow, or in ``results.jsonl``
    with ``tracking=False``) and measure every FINISHED cell its spec measures and it lacks (or
    has at other ``measure`` settings); returns all cells' results. Checkpoints go to ``storage``
    (a path every node sees or a URI Ray Train accepts; default ``checkpoints/`` beside the
    results), one run folder per cell named by its ``config_hash``: an unfinished cell resumes
    from its newest checkpoint there. One driver at a time: a second one for a grid whose driver
    is alive raises ``harness.grid.GridBusy`` before touching anything."""
    cells = expand(spec)
    validate_cells(cells, spec.resources.workers)
    results_path = Path(results_path or Path("outputs") / spec.name / "results.jsonl")
    store = GridStore(spec.name, tracking_uri, results_path, tracking=tracking)
    lease = store.lease()
    lease.acquire()  # before sync(): a second driver would mark the first's running cells KILLED
    try:
        storage = resolve_storage(storage or results_path.parent / "checkpoints")
        cells = resolve_trunks(cells, store.tracking_uri, _trunk_folder(cells, storage))
        return _run_cells(spec, cells, store, lease, address, max_concurrent, storage)
    finally:
        lease.release()


def _trunk_folder(cells: list[RunConfig], storage: str) -> Path | None:
    """Where the grid writes the trunks its cells read from logged runs: ``<storage>/trunks``, a path
    every node sees; ``InputError`` when ``storage`` is a URI and a cell's trunk is a run."""
    if "://" not in storage:
        return Path(storage) / TRUNKS
    if any(cfg.trunk.run is not None and cfg.trunk.checkpoint is None for cfg in cells):
        raise InputError(f"trunk.run with checkpoints at {storage}: workers read a trunk from a file; give "
                         "trunk.checkpoint on a path every node sees")
    return None


def _run_cells(spec: GridSpec, cells: list[RunConfig], store: GridStore, lease, address: str | None,
               max_concurrent: int | None, storage: str) -> GridOutcome:
    done = {digest: r for digest, r in store.sync().items() if r.finished}
    todo = [cfg for cfg in cells if config_hash(cfg) not in done]
    unmeasured = _to_measure(cells, done, store)
    logger.info(f"grid {spec.name!r}: {len(cells)} cells, {len(cells) - len(todo)} already FINISHED"
        + (f" ({len(unmeasured)} to measure)" if unmeasured else "")
        + f", {len(todo)} to run; MLflow {store.tracking.label}, results {store.results_path}, "
        f"checkpoints {storage}")
    if not todo and not unmeasured:
        return GridOutcome([done[config_hash(c)] for c in cells], [], 0.0, 0, store.parent_run_id,
                           store.unlogged, store.results_path)
    for backbone, path in sorted({(cfg.model.backbone, str(path)) for cfg in todo
                                  if (path := uncached_builtin_weights(cfg.model.backbone, cfg.model.backbone_kwargs))}):
        logger.info(f"{backbone}: builtin:digits weights are not made on this machine yet; the first cell "
            f"that needs them pretrains them once ({path}), cells that need them too wait")
    missing = sorted({problem for cfg in todo if (problem := missing_weights(cfg.model.backbone_kwargs))})
    if missing and address is None:  # this machine trains the cells: found now, not a second into each
        raise InputError(missing[0] + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    for problem in missing:  # a cluster's nodes may hold what its driver lacks
        logger.warning(f"{problem} on this machine, the driver's; every node that trains these cells needs it")
    started_ray = init_ray(address)
    try:
        _check_feasible(spec.resources, autoscaling=bool(address))
        parent = store.open_parent(len(cells))
        driver = GridDriver(spec.resources, store, lease, storage, Progress(len(todo)), dict(done))
        began = time.time()
        try:
            for result, cfg, weights in unmeasured:
                driver.measure(result, cfg, weights)
            if todo:
                ordered, unordered = start_order(todo)
                if unordered:
                    logger.info(f"cells start in the spec's order: {unordered}")
                _tuner(spec, [cfg for cfg, _ in ordered], storage, max_concurrent, driver).fit()
            driver.drain()
        finally:
            driver.progress.close()
            store.close_parent([driver.results[h] for c in cells if (h := config_hash(c)) in driver.results])
    finally:
        if started_ray:
            ray.shutdown()
    results = driver.results
    for cfg in todo:  # a trial Tune never started or finished (the driver was stopped)
        results.setdefault(config_hash(cfg), failed_result(cfg, RuntimeError("the cell did not run to its end")))
    return GridOutcome([results[config_hash(c)] for c in cells], [config_hash(c) for c in todo],
                       time.time() - began, driver.progress.peak, parent, store.unlogged, store.results_path,
                       max(1, len(driver.measure_nodes)))


_TRIAL_DRIVER_MEMORY = 2**30  # bytes: a trial that only drives a Ray Train run


def _trial_name(trial) -> str:
    return config_hash(from_dict(RunConfig, trial.config["cell"]))


def _tuner(spec: GridSpec, todo: list[RunConfig], storage: str, max_concurrent: int | None, driver):
    """A Tune experiment over ``todo``, one trial per cell (named by its ``config_hash``). A trial
    holds one training worker's resources, or, when it drives a Ray Train run (which reserves
    its workers' resources itself), no CPU and the memory of its own process (Tune refuses a trial
    that asks for nothing), so a node that holds the run's workers holds its trial too."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no trial tables on stdout
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the grid's store is the record
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # "no result.json" per trial
    r = spec.resources
    holds = ({"CPU": 0, "memory": _TRIAL_DRIVER_MEMORY} if needs_ray_train(r.workers, storage)
             else {"CPU": r.cpus, **({"GPU": r.gpus} if r.gpus else {}), **_memory_request(r)})
    return tune.Tuner(
        tune.with_resources(train_trial, holds),
        param_space={"cell": tune.grid_search([to_dict(cfg) for cfg in todo]), "resources": to_dict(r),
                     "storage": storage},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"tune-{spec.name}", storage_path=storage, callbacks=[driver], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=r.retries)))


class GridDriver(tune.Callback):
    """The grid's Tune callback, in the driver process: the single writer of the grid's store."""

    def __init__(self, resources: Resources, store: GridStore, lease, storage: str,
                 progress: Progress, results: dict[str, CellResult]) -> None:
        self.r, self.store, self.lease, self.storage = resources, store, lease, storage
        self.progress, self.results = progress, results
        self.measure_nodes: set[str] = set()
        self._measuring: dict = {}  # measurement task ref -> the cell's result
        self._cells: dict[str, tuple[RunConfig, str]] = {}  # trial id -> (its cell, the cell's config_hash)

    def _cell(self, trial) -> tuple[RunConfig, str]:
        """A trial's cell and ``config_hash``, parsed once per trial (results come every few seconds)."""
        if trial.trial_id not in self._cells:
            cfg = from_dict(RunConfig, trial.config["cell"])
            self._cells[trial.trial_id] = cfg, config_hash(cfg)
        return self._cells[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        cfg, digest = self._cell(trial)
        self.store.start_cell(digest, cell_tags(cfg, digest))
        self.progress.started(digest, f"{cfg.model.classifier}@{cfg.model.backbone}", cfg.train.iters)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        cfg, digest = self._cell(trial)
        if result.get("rows"):
            self.store.log_rows(digest, result["rows"])
            self.progress.at(digest, result["rows"][-1]["iteration"])
        if REPORT_TRAINED in result:
            self._trained(cfg, result)
        elif REPORT_FAILED in result:
            failed = CellResult.from_dict(result[REPORT_FAILED], f"trial {trial.trial_id}")
            self._record(failed.placed(result["placement"], result["seconds"]), cfg, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Tune's retries of a lost trial are spent: the cell is FAILED."""
        cfg, _ = self._cell(trial)
        error = trial.get_pickled_error() or RuntimeError("the trial failed")
        text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).is_file() else None
        self._record(failed_result(cfg, error, text), cfg, None)

    def on_step_end(self, iteration, trials, **info) -> None:
        self.poll()
        self.lease.renew()
        self.progress.tick()

    def _trained(self, cfg: RunConfig, report: dict) -> None:
        trained = trained_cell(self.storage, cfg)
        result, weights = trained.result.placed(report["placement"], report["seconds"]), trained.weights()
        self._record(result, cfg, weights)
        if cfg.measure.enabled:
            self.measure(result, cfg, weights)

    def _record(self, result: CellResult, cfg: RunConfig, weights: bytes | None) -> None:
        self.store.record(result, weights=weights)
        self.results[result.config_hash] = result
        self.progress.recorded(result, measuring=result.finished and cfg.measure.enabled)

    def measure(self, result: CellResult, cfg: RunConfig, weights: bytes) -> None:
        """Measure a trained cell's cost in a task that holds a whole node's CPUs and GPUs (the
        commonest shape of the alive nodes the measurement fits on; the measurement's own demand
        when none is alive, for an autoscaler to add one): it starts on the first such node that
        is free and keeps anything else off it while it times."""
        whole = _whole_node(self.r)
        task = ray.remote(measure_task).options(
            num_cpus=whole["CPU"], num_gpus=whole["GPU"], max_retries=self.r.retries, retry_exceptions=False,
            **_memory_request(self.r))
        ref = task.remote(to_dict(cfg), ray.put(weights), max(1, int(self.r.measure_cpus)), whole, self.r.memory_gb)
        self._measuring[ref] = result

    def poll(self, timeout: float = 0) -> None:
        """Record the measurements that have ended."""
        if not self._measuring:
            return
        ready, _ = ray.wait(list(self._measuring), num_returns=len(self._measuring), timeout=timeout)
        for ref in ready:
            result = self._measuring.pop(ref)
            try:
                measured = ray.get(ref)
            except Exception as exc:  # retries exhausted: a lost node
                measured = {"error": one_line(exc)}
            if "error" in measured:  # the cell trained fine; its cost is missing, and says why
                result = result.with_measurement(seconds=measured.get("seconds", 0.0), error=measured["error"])
            else:
                result = result.with_measurement(measured["metrics"], measured["record"], measured["seconds"])
                self.measure_nodes.add(measured["record"]["node"]["node_id"])
            self.store.record_measurement(result)
            self.results[result.config_hash] = result
            self.progress.measured(result)

    def drain(self) -> None:
        """Wait for the measurements still running."""
        while self._measuring:
            self.poll(timeout=1.0)
            self.lease.renew()
            self.progress.tick()


def _memory_request(r: Resources) -> dict[str, int]:
    """Ray's ``memory`` resource (bytes) for each task, when ``memory_gb`` asks for one."""
    return {"memory": int(r.memory_gb * 2**30)} if r.memory_gb else {}


def _demands(r: Resources) -> dict[str, dict[str, float]]:
    """What one task needs of one node: a training worker (a cell has ``r.workers``), a measurement."""
    memory = _memory_request(r)
    return {"training": {"CPU": r.cpus, "GPU": r.gpus, **memory},
            "measurement": {"CPU": r.measure_cpus, "GPU": r.measure_gpus, **memory}}


def _fits(demand: dict[str, float], node: dict[str, float]) -> bool:
    """Whether a node with resources ``node`` can hold a task asking for ``demand``."""
    return all(node.get(k, 0) >= v for k, v in demand.items())


def _whole_node(r: Resources) -> dict[str, float]:
    """The CPUs and GPUs a measurement reserves: those of a whole node, the commonest shape among
    the alive nodes it fits on (ties: the smallest); its own demand when none is alive."""
    demand = _demands(r)["measurement"]
    shapes = Counter((node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)) for node in ray.nodes()
                     if node["Alive"] and _fits(demand, node["Resources"]))
    if not shapes:
        return {"CPU": r.measure_cpus, "GPU": r.measure_gpus}
    (cpus, gpus), _ = min(shapes.items(), key=lambda item: (-item[1], item[0]))
    return {"CPU": cpus, "GPU": gpus}


def _check_feasible(r: Resources, autoscaling: bool) -> None:
    """A task no node can hold would wait forever: an ``InputError`` naming the resource
    (on a cluster given by ``--address`` only a warning: an autoscaler may add the node)."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for task, demand in _demands(r).items():
        if any(_fits(demand, node) for node in nodes):
            continue
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in demand}
        message = (f"resources: no node can run a {task} task needing "
                   + ", ".join(f"{k} {v:g}" for k, v in demand.items() if v)
                   + " (largest node: " + ", ".join(f"{k} {v:g}" for k, v in largest.items()) + ")")
        if not autoscaling:
            raise InputError(message)
        logger.warning(f"{message}; waiting for the autoscaler")


def _to_measure(cells: list[RunConfig], done: dict[str, CellResult],
                store: GridStore) -> list[tuple[CellResult, RunConfig, bytes]]:
    """(result ready for its measurement, cell, its logged weights) of every FINISHED cell whose
    spec measures it and that has no measurement at the spec's ``measure`` settings: trained by a
    driver that stopped before measuring it, or measured at other settings. Its cost is measured
    from its weights, never retrained. A cell without logged weights keeps what it has, and the
    log says so."""
    chosen = []
    for cfg in cells:
        result = done.get(config_hash(cfg))
        wanted = to_dict(cfg.measure)
        if result is None or not cfg.measure.enabled or (result.measurement or {}).get("settings") == wanted:
            continue
        weights = store.trained_weights(result)
        if weights is None:
            logger.info(f"{describe(cfg)}: no logged weights to measure at the spec's measure settings; "
                "it keeps its last measurement")
            continue
        chosen.append((result.without_measurement(wanted), cfg, weights))
    return chosen
