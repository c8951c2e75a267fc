"""Classifier x backbone grids on Ray (docs/architecture.md, "Grid").

A grid spec (``jobs/*.yaml``, safe-loaded) expands to cells, one ``RunConfig`` each.
Each cell trains and evaluates in one Ray task: itself on one worker, or as the driver of a
Ray Train run over ``resources.workers`` (``harness.engine``), checkpointing under the
grid's storage so that a restarted cell resumes. Its cost is
then measured from the trained weights in a second task that times alone: measurements
start once every training task has started, and each reserves all CPUs and GPUs of the
node it is pinned to, so no training, data loading or other measurement shares its cores
or GPU while it times (``measurement.json`` records the node and what was reserved). Only
this driver writes MLflow: a parent run per grid, a child run per cell with the trained
weights; each result is also appended to ``results.jsonl`` as it arrives. Re-running a grid skips cells whose ``config_hash``
already has a FINISHED child run and runs the rest (new cells included); a FINISHED cell
whose ``measure`` settings changed is measured again from its logged weights and its run
updated, never retrained (``config_hash`` leaves measurement out).

Failures: an exception or a non-finite loss inside a cell makes that cell FAILED (error
and traceback recorded) and the grid goes on; a lost worker or node is a system failure
that Ray (a task retry, or Ray Train's ``FailureConfig``) retries ``resources.retries`` times,
from the cell's newest checkpoint, before the cell counts as FAILED.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from harness.cells import Cell, baseline, baseline_name, configurations
from harness.config import RunConfig, _bounded, config_hash, from_dict, read_yaml, to_dict
from harness.errors import InputError, is_out_of_memory

_SECTIONS = ("model", "data", "train", "measure")  # RunConfig sections a spec may set


@dataclass
class Resources:
    """Per training worker: a cell trains on ``workers`` data-parallel workers (1: the engine in
    one Ray task; more: a Ray Train run), each holding ``cpus`` CPUs (also its torch threads)
    and ``gpus`` GPUs (a fraction packs several cells on one GPU). The cost measurement runs alone on a node
    with at least ``measure_cpus`` CPUs and ``measure_gpus`` GPUs, reserving the whole node,
    and times with ``measure_cpus`` torch threads (``measure_gpus: 1``: latency on a GPU,
    ``0``: on CPU); ``retries`` restarts a cell after a lost worker or node, from its latest
    checkpoint (never after an exception in the cell); ``memory_gb`` (0: none)
    reserves host memory for each task in Ray's scheduler and caps the task's process at
    it (its data segment, ``RLIMIT_DATA``, the Ray worker's own ~1 GB included), so a cell
    that needs more fails with an out-of-memory error instead of the kernel's OOM killer
    taking the node, and the cells beside it, down."""

    cpus: float = _bounded(1, above=0)
    gpus: float = _bounded(0, min=0)
    workers: int = _bounded(1, min=1)
    measure_cpus: float = _bounded(1, above=0)
    measure_gpus: float = _bounded(0, min=0)
    retries: int = _bounded(3, min=0)
    memory_gb: float = _bounded(0, min=0)


@dataclass
class GridSpec:
    """Axes ``backbones`` x ``classifiers`` x ``datasets`` x ``seeds`` x ``necks``; shared
    config sections ``model``/``data``/``train``/``measure`` (as in ``RunConfig``; evaluation
    settings live in ``data``); ``backbone_overrides`` and ``classifier_overrides`` map a
    name to config sections applied to that axis value's cells (classifier overrides last)."""

    name: str = ""
    backbones: list[str] = field(default_factory=list)
    classifiers: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=lambda: ["digits_sem_seg"])
    seeds: list[int] = field(default_factory=lambda: [0])
    necks: list[str] = field(default_factory=lambda: ["mlp"])
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    measure: dict = field(default_factory=dict)
    backbone_overrides: dict = field(default_factory=dict)
    classifier_overrides: dict = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)


_AXES = ("backbones", "classifiers", "datasets", "seeds", "necks")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid spec before anything runs: keys, types and value ranges,
    axes (non-empty, no repeats, registered names), override sections and resources.
    ``InputError`` naming the file, the key path and what was expected otherwise."""
    path = Path(path)
    data = read_yaml(path, "grid spec")
    try:
        return _check_spec(from_dict(GridSpec, data if data is not None else {}))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _check_spec(spec: GridSpec) -> GridSpec:
    if not spec.name:
        raise InputError("name: required (the MLflow experiment the grid logs to)")
    if not _NAME.fullmatch(spec.name):
        raise InputError(f"name={spec.name!r}; expected 1-100 letters, digits, '_', '.' or '-' "
                         "(it names an MLflow experiment and the folder outputs/<name>)")
    for axis in _AXES:
        values = getattr(spec, axis)
        if not values:
            raise InputError(f"{axis}: empty axis; list at least one value")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise InputError(f"{axis}: {', '.join(repeated)} listed more than once")
    _check_names(spec)
    from_dict(RunConfig, {section: getattr(spec, section) for section in _SECTIONS})
    for kind, axis in (("backbone_overrides", spec.backbones), ("classifier_overrides", spec.classifiers)):
        overrides = getattr(spec, kind)
        stray = sorted(set(overrides) - set(axis))
        if stray:
            raise InputError(f"{kind}: {', '.join(stray)} not on the grid's axis; axis values: {', '.join(axis)}")
        for name, sections in overrides.items():
            from_dict(RunConfig, _sections(sections, f"{kind}.{name}"), f"{kind}.{name}")
            if "neck" in sections.get("model", {}) and len(spec.necks) > 1:
                raise InputError(f"{kind}.{name}.model.neck: a neck can be set per backbone or classifier only when "
                                 f"the necks axis has one value (it has {spec.necks})")
            if "neck" in sections.get("model", {}):
                from backbones import list_necks

                _check_named(f"{kind}.{name}.model.neck", _registered("neck", list_necks()), sections["model"]["neck"])
    gpus = spec.resources.gpus
    if gpus > 1 and gpus != int(gpus):
        raise InputError(f"resources.gpus={gpus:g}; a task can share one GPU (a fraction) or take whole GPUs, "
                         "not a fraction above 1")
    return spec


def _registered(kind: str, known: list[str]):
    """A check that ``name`` is one of ``known``, raising ``unknown_name_error`` otherwise."""
    from harness.errors import unknown_name_error

    def check(name: str) -> None:
        if name not in known:
            raise unknown_name_error(kind, name, known)
    return check


def _check_named(where: str, check, name: str) -> None:
    try:
        check(name)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _check_names(spec: GridSpec) -> None:
    """Every axis value is registered; the error names the axis entry and lists what is."""
    from backbones import check_backbone, list_necks
    from classifiers import list_classifiers
    from harness.run import dataset_splits

    checks = {"backbones": check_backbone, "datasets": dataset_splits,
              "necks": _registered("neck", list_necks()), "classifiers": _registered("classifier", list_classifiers())}
    for axis, check in checks.items():
        for index, name in enumerate(getattr(spec, axis)):
            _check_named(f"{axis}[{index}]", check, name)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _sections(update: dict, where: str) -> dict:
    if not isinstance(update, dict):
        raise InputError(f"{where}: expected a mapping of config sections ({', '.join(_SECTIONS)})")
    unknown = sorted(set(update) - set(_SECTIONS))
    if unknown:
        raise InputError(f"{where}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(_SECTIONS)}")
    return update


def expand(spec: GridSpec) -> list[RunConfig]:
    """One ``RunConfig`` per cell, in axis order (dataset, backbone, neck, classifier, seed):
    defaults <- shared sections <- backbone overrides <- classifier overrides <- axis values,
    except that a backbone's or (first) a classifier's override of ``model.neck`` replaces the
    (single) necks axis value for its cells (e.g. ``hrnetv2_w48: {model: {neck: ocr}}``,
    ``ece: {model: {neck: stages}}``). Each cell's
    classifier kwargs are resolved (``harness.run.resolve_classifier``)."""
    from harness.run import resolve_classifier

    threads = max(1, int(spec.resources.cpus))
    cells = []
    for dataset in spec.datasets:
        for backbone in spec.backbones:
            for neck in spec.necks:
                for classifier in spec.classifiers:
                    for seed in spec.seeds:
                        data = to_dict(RunConfig())
                        _merge(data, {s: getattr(spec, s) for s in _SECTIONS})
                        _merge(data, _sections(spec.backbone_overrides.get(backbone, {}),
                                               f"backbone_overrides.{backbone}"))
                        _merge(data, _sections(spec.classifier_overrides.get(classifier, {}),
                                               f"classifier_overrides.{classifier}"))
                        own_neck = spec.classifier_overrides.get(classifier, {}).get("model", {}).get(
                            "neck", spec.backbone_overrides.get(backbone, {}).get("model", {}).get("neck", neck))
                        _merge(data, {"model": {"backbone": backbone, "classifier": classifier, "neck": own_neck},
                                      "data": {"dataset": dataset}, "train": {"seed": seed, "threads": threads}})
                        data["experiment"] = spec.name
                        try:
                            cells.append(resolve_classifier(from_dict(RunConfig, data)))
                        except InputError as exc:
                            raise InputError(f"cell {classifier}@{backbone}/{neck} {dataset} s{seed}: {exc}") from None
    return cells


def validate_cells(cells: list[RunConfig], workers: int = 1) -> None:
    """What needs a whole cell's config, for every cell, before any runs: the global batch splits
    over ``workers`` x ``train.accumulate``, the classifier's hyper-parameters (names are checked by
    ``load_grid``; value ranges, the measure settings' included, by ``from_dict`` as ``expand``
    builds each cell)."""
    from classifiers import build_classifier
    from harness.data import split_batch

    seen = set()
    for cfg in cells:
        try:
            split_batch(cfg.data.batch_size, workers, cfg.train.accumulate)
        except InputError as exc:
            raise InputError(f"cell {describe(cfg)}: {exc} (resources.workers={workers})") from None
        m = cfg.model
        key = (m.classifier, json.dumps(m.classifier_kwargs, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_classifier(m.classifier, num_classes=2, in_channels=8, **m.classifier_kwargs)
        except InputError as exc:
            raise InputError(f"cell {describe(cfg)}: {exc}") from None


def describe(cfg: RunConfig) -> str:
    return f"{cfg.model.classifier}@{cfg.model.backbone}/{cfg.model.neck} {cfg.data.dataset} s{cfg.train.seed}"


# ---------------------------------------------------------------------------------------
# Ray tasks. They return results; they never write MLflow (only the driver does).


def _placement(started: float) -> dict:
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "worker_pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started": started, "ended": time.time()}


def _one_line(exc: BaseException) -> str:
    """``Type: first line``; an out-of-memory error outside a training step says so first."""
    text = f"{type(exc).__name__}: {str(exc).strip()}".splitlines()[0]
    if is_out_of_memory(exc) and "out of memory" not in text:
        text = f"out of memory ({text})"
    return text


def failed_result(cfg: RunConfig, exc: BaseException) -> dict:
    """A CellResult for a cell that raised: status FAILED, the error, its traceback and,
    for a non-finite loss, the iteration it happened at."""
    from harness.run import cell_tags

    return {
        "status": "FAILED", "config": to_dict(cfg), "config_hash": config_hash(cfg), "tags": cell_tags(cfg),
        "metrics": {}, "per_class": None, "history": [], "environment": {}, "measurement": None,
        "error": getattr(exc, "error", None) or _one_line(exc),  # a Ray Train worker's error (CellFailed)
        "traceback": getattr(exc, "remote_traceback", None) or "".join(traceback.format_exception(exc)),
        "failed_at_iteration": getattr(exc, "iteration", None),
    }


def _train_task(cfg_dict: dict, r: dict, storage: str) -> tuple[dict, bytes | None]:
    """Train and evaluate one cell: (CellResult, trained weights or None), as two Ray objects, so
    that the driver fetches the weights only when it logs them. The cell resumes from its newest
    checkpoint under ``storage``/<config_hash> (a restart after a lost worker or driver)."""
    from harness.engine import LocalContext
    from harness.engine.launch import CELL_ERRORS, launch, memory_cap, needs_ray_train
    from harness.run import resolve_device, state_dict_bytes, train_cell

    started = time.time()
    cfg, resources = from_dict(RunConfig, cfg_dict), from_dict(Resources, r)
    weights = None
    try:
        if needs_ray_train(resources.workers, storage):
            result, weights = launch(train_cell, cfg, resources.workers, storage, resources.cpus, resources.gpus,
                                     resources.memory_gb, resources.retries)
        else:
            run = Path(storage) / config_hash(cfg)
            try:
                with memory_cap(resources.memory_gb):
                    result, model = train_cell(cfg, LocalContext(resolve_device(cfg.device), run, resume=True),
                                               log=lambda msg: None)
            except CELL_ERRORS:
                shutil.rmtree(run, ignore_errors=True)  # as Ray Train's path: a failed cell run again starts over
                raise
            weights = state_dict_bytes(model)
            del model
    except Exception as exc:  # the cell fails, the grid goes on
        result = failed_result(cfg, exc)
    result["environment"]["ray"] = _placement(started)
    result["seconds"] = time.time() - started
    return result, weights


def _measure_task(cfg_dict: dict, weights: bytes, threads: int, reserved: dict, memory_gb: float = 0) -> dict:
    """Measure a trained cell's cost alone on its node: {"metrics", "record", "seconds"}, or
    {"error", "seconds"}. ``reserved`` is what the task holds of its node (all of it)."""
    from harness.engine.launch import memory_cap
    from harness.measure import measure_model
    from harness.run import load_segmentor, resolve_device

    started = time.time()
    try:
        cfg = from_dict(RunConfig, cfg_dict)
        device = resolve_device(cfg.device)
        model = load_segmentor(cfg, weights)
        with memory_cap(memory_gb):
            metrics, record = measure_model(model.to(device), cfg.measure, device, threads)
        record["node"] = {"exclusive": True, "reserved": reserved, **_placement(started)}
        return {"metrics": metrics, "record": record, "seconds": time.time() - started}
    except Exception as exc:
        return {"error": _one_line(exc), "seconds": time.time() - started}


# ---------------------------------------------------------------------------------------
# The driver.


@dataclass
class GridOutcome:
    results: list[dict]          # one per cell of the spec, in expansion order
    ran_hashes: list[str]        # config_hash of the cells run now (the rest were already FINISHED)
    wall_seconds: float          # of this invocation's running phase
    slots: int                   # cells that could run at once
    parent_run_id: str | None
    unlogged: int = 0            # results written to results.jsonl only (tracking store off or failed)
    results_path: Path | None = None
    measure_nodes: int = 1       # nodes measurements ran on, one at a time each

    @property
    def ran(self) -> int:
        return len(self.ran_hashes)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if r["status"] != "FINISHED"]


def _memory_request(r: Resources) -> dict[str, int]:
    """Ray's ``memory`` resource (bytes) for each task, when ``memory_gb`` asks for one."""
    return {"memory": int(r.memory_gb * 2**30)} if r.memory_gb else {}


def _demands(r: Resources) -> dict[str, dict[str, float]]:
    """What one task needs of one node: a training worker (a cell has ``r.workers``), a measurement."""
    memory = _memory_request(r)
    return {"training": {"CPU": r.cpus, "GPU": r.gpus, **memory},
            "measurement": {"CPU": r.measure_cpus, "GPU": r.measure_gpus, **memory}}


def _measurement_nodes(r: Resources) -> list[tuple[str, dict[str, float]]]:
    """(node id, the whole node's CPUs and GPUs) of every alive node a measurement fits on."""
    import ray

    demand = _demands(r)["measurement"]
    return [(node["NodeID"], {"CPU": node["Resources"].get("CPU", 0.0), "GPU": node["Resources"].get("GPU", 0.0)})
            for node in ray.nodes()
            if node["Alive"] and all(node["Resources"].get(k, 0) >= v for k, v in demand.items())]


def _check_feasible(r: Resources, autoscaling: bool, log) -> None:
    """A task no node can hold would wait forever: an ``InputError`` naming the resource
    (on a cluster given by ``--address`` only a warning: an autoscaler may add the node)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for task, demand in _demands(r).items():
        if any(all(node.get(k, 0) >= v for k, v in demand.items()) for node in nodes):
            continue
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in demand}
        message = (f"resources: no node can run a {task} task needing "
                   + ", ".join(f"{k} {v:g}" for k, v in demand.items() if v)
                   + " (largest node: " + ", ".join(f"{k} {v:g}" for k, v in largest.items()) + ")")
        if not autoscaling:
            raise InputError(message)
        log(f"[segheads] warning: {message}; waiting for the autoscaler")


def _slots(spec: GridSpec, max_concurrent: int | None, cells: int) -> int:
    import ray

    total = ray.cluster_resources()
    fits = [total.get(k, 0) / (v * spec.resources.workers) for k, v in _demands(spec.resources)["training"].items() if v]
    slots = int(min(fits)) if fits else cells
    return max(1, min(slots, max_concurrent or cells, cells))


def run_grid(spec: GridSpec, tracking_uri: str | None = None, address: str | None = None,
             max_concurrent: int | None = None, results_path: str | Path | None = None, log=print,
             tracking: bool = True, storage: str | Path | None = None) -> GridOutcome:
    """Run every cell of ``spec`` not already FINISHED (in MLflow, or in ``results.jsonl``
    with ``tracking=False``); returns all cells' results. Checkpoints go to ``storage`` (a path or
    a URI Ray Train accepts; default ``checkpoints/`` beside the results), one run folder per cell named by
    its ``config_hash``: an unfinished cell resumes from its newest checkpoint there. One driver
    at a time: a second one for a grid whose driver is alive raises ``harness.lease.GridBusy``
    before touching anything."""
    from harness.engine.launch import resolve_storage
    from harness.gridstore import GridStore

    cells = expand(spec)
    validate_cells(cells, spec.resources.workers)
    results_path = Path(results_path or Path("outputs") / spec.name / "results.jsonl")
    store = GridStore(spec.name, tracking_uri, results_path, tracking=tracking, log=log)
    lease = store.lease()
    lease.acquire()  # before sync(): a second driver would mark the first's running cells KILLED
    try:
        storage = resolve_storage(storage or results_path.parent / "checkpoints")
        return _run_cells(spec, cells, store, lease, address, max_concurrent, log, storage)
    finally:
        lease.release()


def _run_cells(spec: GridSpec, cells: list[RunConfig], store, lease, address: str | None,
               max_concurrent: int | None, log, storage: str) -> GridOutcome:
    import ray

    from harness.engine.launch import init_ray, needs_ray_train

    from harness.data import DatasetCatalog
    from harness.pretrain import uncached_builtin_weights
    from harness.progress import Progress
    from harness.run import dataset_splits

    done = store.finished()
    todo = [cfg for cfg in cells if config_hash(cfg) not in done]
    remeasure = _to_remeasure(cells, done, store, log)
    log(f"[segheads] grid {spec.name!r}: {len(cells)} cells, {len(cells) - len(todo)} already FINISHED"
        + (f" ({len(remeasure)} to measure again at the spec's measure settings)" if remeasure else "")
        + f", {len(todo)} to run; MLflow {'off' if store.offline else store.tracking_uri}, results {store.results_path}, "
        f"checkpoints {storage}")
    if not todo and not remeasure:
        return GridOutcome([done[config_hash(c)] for c in cells], [], 0.0, 0, store.parent_run_id,
                           store.unlogged, store.results_path)

    for dataset in {cfg.data.dataset for cfg in todo}:  # materialise built-in data once, here, not in every worker
        for split in dataset_splits(dataset).values():
            DatasetCatalog.get(split)
    for backbone, path in sorted({(cfg.model.backbone, str(path)) for cfg in todo
                                  if (path := uncached_builtin_weights(cfg.model.backbone, cfg.model.backbone_kwargs))}):
        log(f"[segheads] {backbone}: builtin:digits weights are not made on this machine yet; the first cell "
            f"that needs them pretrains them once ({path}), cells that need them too wait")
    started_ray = init_ray(address)
    try:
        _check_feasible(spec.resources, autoscaling=bool(address), log=log)
    except InputError:
        if started_ray:
            ray.shutdown()
        raise
    parent = store.open_parent(len(cells))
    r = spec.resources
    memory = _memory_request(r)
    # A Ray Train run's task is only its driver: Ray Train reserves its workers' resources.
    holds = {"num_cpus": 0} if needs_ray_train(r.workers, storage) else {"num_cpus": r.cpus, "num_gpus": r.gpus, **memory}
    train_task = ray.remote(_train_task).options(max_retries=r.retries, retry_exceptions=False, num_returns=2, **holds)
    measure_task, nodes = ray.remote(_measure_task), []
    slots = _slots(spec, max_concurrent, len(todo))
    queue, pending, began = list(todo), {}, time.time()
    again = {id(result) for result, _, _ in remeasure}  # measured again: their runs are updated, not logged anew
    unmeasured = [(result, cfg, ray.put(weights)) for result, cfg, weights in remeasure]
    del remeasure  # the weights live in Ray's object store now
    results = dict(done)
    progress = Progress(len(todo), slots, log)

    def measure(result: dict, cfg: RunConfig, weights_ref, index: int):
        """A measurement pinned to a node and holding all of it, so that it starts when that
        node is idle and nothing else starts there until it ends."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not nodes:  # every node that could hold it is gone: the cell keeps its training, its cost says why
            pending[ray.put({"error": "no alive node has the measurement's resources", "seconds": 0.0})] = (
                "measure", (result, weights_ref))
            return
        node_id, whole = nodes[index % len(nodes)]
        task = measure_task.options(
            num_cpus=whole["CPU"], num_gpus=whole["GPU"], max_retries=r.retries, retry_exceptions=False,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), **memory)
        ref = task.remote(to_dict(cfg), weights_ref, max(1, int(r.measure_cpus)), whole, r.memory_gb)
        pending[ref] = ("measure", (result, weights_ref))

    try:
        while queue or pending or unmeasured:
            while queue and sum(1 for kind, _ in pending.values() if kind == "train") < slots:
                cfg = queue.pop(0)
                result_ref, weights_ref = train_task.remote(to_dict(cfg), to_dict(r), storage)
                pending[result_ref] = ("train", (cfg, weights_ref))
                progress.started()
            if not queue and unmeasured:  # every training task has started: measure, each cell alone
                nodes = _measurement_nodes(r) or nodes  # the nodes alive now
                log(f"[segheads] measuring {len(unmeasured)} trained cell(s), each alone on one of {len(nodes)} node(s)")
                for index, (result, cfg, weights_ref) in enumerate(unmeasured):
                    measure(result, cfg, weights_ref, index)
                unmeasured = []
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                kind, payload = pending.pop(ref)
                if kind == "train":
                    cfg, weights_ref = payload
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # retries exhausted: a lost node, a killed worker
                        result = failed_result(cfg, exc)
                    if result["status"] == "FINISHED" and cfg.measure.enabled:
                        unmeasured.append((result, cfg, weights_ref))
                        progress.trained(result)
                        continue
                else:
                    result, weights_ref = payload
                    try:
                        measured = ray.get(ref)
                    except Exception as exc:  # retries exhausted
                        measured = {"error": _one_line(exc)}
                    result["measure_seconds"] = measured.get("seconds", 0.0)
                    if "error" in measured:  # the cell trained fine; its cost is missing, and says why
                        result["measure_error"] = measured["error"]
                    else:
                        result["metrics"].update(measured["metrics"])
                        result["measurement"] = measured["record"]
                    if id(result) in again:
                        store.record_measurement(result)
                        results[result["config_hash"]] = result
                        progress.remeasured(result)
                        continue
                weights = _fetch_weights(weights_ref) if result["status"] == "FINISHED" else None
                store.record(result, parent, weights=weights)
                results[result["config_hash"]] = result
                progress.finished(result)
            progress.tick(running=len(pending))
            lease.renew()
    finally:
        progress.close()
        store.close_parent(parent, [results[config_hash(c)] for c in cells if config_hash(c) in results])
        if started_ray:
            ray.shutdown()
    return GridOutcome([results[config_hash(c)] for c in cells], [config_hash(c) for c in todo],
                       time.time() - began, slots, parent, store.unlogged, store.results_path, max(1, len(nodes)))


def _to_remeasure(cells: list[RunConfig], done: dict[str, dict], store, log) -> list[tuple[dict, RunConfig, bytes]]:
    """(result ready for its new measurement, cell, its logged weights) of every FINISHED cell
    whose spec now measures it with other ``measure`` settings than its last measurement's:
    its cost is measured again from its weights, never retrained. A cell without logged
    weights keeps its old measurement, and the log says so."""
    from harness.measure import MEASUREMENT_PREFIXES

    chosen = []
    for cfg in cells:
        result = done.get(config_hash(cfg))
        wanted = to_dict(cfg.measure)
        if result is None or not cfg.measure.enabled or (result.get("measurement") or {}).get("settings") == wanted:
            continue
        weights = store.trained_weights(result)
        if weights is None:
            log(f"[segheads] {describe(cfg)}: no logged weights to measure again at the new measure settings; "
                "it keeps its last measurement")
            continue
        metrics = {k: v for k, v in result["metrics"].items() if not k.startswith(MEASUREMENT_PREFIXES)}
        config = {**result["config"], "measure": wanted}
        again = {k: v for k, v in result.items() if k not in ("measure_error", "measure_seconds")}
        chosen.append(({**again, "config": config, "metrics": metrics, "measurement": None}, cfg, weights))
    return chosen


def _fetch_weights(ref) -> bytes | None:
    """A FINISHED cell's trained weights from the object store (None if they were lost with a node)."""
    import ray

    try:
        return ray.get(ref)
    except Exception:
        return None


def overhead(outcome: GridOutcome) -> dict[str, float]:
    """How much of this invocation's wall time was not cell work: wall time over the ideal
    (the cells' training seconds / slots + their measurement seconds / measurement nodes,
    since a measurement holds its whole node), and the idle slot-seconds per cell
    (scheduling, worker start-up, result transfer, logging, waiting for the last cell)."""
    ran = [r for r in outcome.results if r["config_hash"] in set(outcome.ran_hashes)]
    if not ran or not outcome.slots:
        return {}
    training = sum(r.get("seconds", 0.0) for r in ran)
    measuring = sum(r.get("measure_seconds", 0.0) for r in ran)
    ideal = training / outcome.slots + measuring / max(1, outcome.measure_nodes)
    if not ideal:
        return {}
    return {"wall_over_ideal": outcome.wall_seconds / ideal, "measure_seconds": measuring,
            "idle_seconds_per_cell": (outcome.wall_seconds - ideal) * outcome.slots / len(ran)}


def comparison_table(results: list[dict]) -> str:
    """One row per cell: mIoU and its delta over the same seed of its baseline
    (``harness.cells.baseline``: softmax on the same backbone, on the same neck where the grid
    has one; named in the last column), head parameters, GFLOPs, latency p50 at the first
    measured batch size, training time."""
    finished = {id(r): Cell.from_result(r, order) for order, r in enumerate(results) if r["status"] == "FINISHED"}
    configs = configurations(list(finished.values()))
    config_of = {id(cell): config for config in configs for cell in config.cells.values()}
    header = (f"{'dataset':<16}{'backbone':<18}{'neck':<14}{'classifier':<11}{'seed':>5} {'status':<9}{'mIoU':>7}"
              f"{'vs base':>9}{'head params':>12}{'GFLOPs':>8}{'p50 ms':>9}{'train s':>9}  baseline")
    lines = [header, "-" * len(header)]
    for r in results:
        t, m = r["tags"], r["metrics"]
        miou, delta, named = m.get("mIoU"), "", ""
        cell = finished.get(id(r))
        config = config_of.get(id(cell)) if cell is not None else None
        base = baseline(config, configs) if config is not None else None
        if base is not None and int(t["seed"]) in base.cells and miou is not None:
            delta = f"{miou - base.cells[int(t['seed'])].metrics['mIoU']:+.2f}"
            named = baseline_name(config, base)
        measurement = r.get("measurement") or {}
        batch = (measurement.get("measured_batch_sizes") or measurement.get("settings", {}).get("batch_sizes") or [1])[0]
        p50 = m.get(f"latency/bs{batch}/p50_ms")
        lines.append(
            f"{t['dataset']:<16}{t['backbone']:<18}{t['neck']:<14}{t['classifier']:<11}{t['seed']:>5} {r['status']:<9}"
            + (f"{miou:>7.2f}" if miou is not None else f"{'-':>7}") + f"{delta:>9}"
            + (f"{m['params/head']:>12,}" if "params/head" in m else f"{'-':>12}")
            + (f"{m['gflops/total']:>8.2f}" if "gflops/total" in m else f"{'-':>8}")
            + (f"{p50:>9.1f}" if p50 is not None else f"{'-':>9}")
            + (f"{m['train/seconds']:>9.0f}" if "train/seconds" in m else f"{'-':>9}") + f"  {named}".rstrip())
        if r["status"] != "FINISHED":
            lines.append(f"{'':<4}error: {r.get('error', 'unknown')}")
    return "\n".join(lines)
