"""Grid specs: reading and checking a spec (``load_grid``), expanding it into one ``RunConfig`` per
cell (``expand``) and checking every cell before any runs (``validate_cells``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from backbones import check_backbone, list_necks
from classifiers import build_classifier, list_classifiers
from harness.config import RunConfig, apply_overrides, bounded, from_dict, read_yaml, to_dict
from harness.data import dataset_splits, split_batch
from harness.engine import CellResources
from harness.errors import InputError, one_line, unknown_name_error
from harness.measure import training_flops
from harness.modeling import resolve_classifier
from harness.plugins import load_plugins, with_plugins

_SECTIONS = ("model", "data", "train", "measure", "eval", "trunk")  # RunConfig sections a spec may set
# Config keys the axes set (and the experiment, the spec's name): an override may not change them.
_AXIS_KEYS = ("model.backbone", "model.classifier", "model.neck", "data.dataset", "train.seed", "experiment")


@dataclass
class Resources:
    """Per training worker: a cell trains on ``workers`` data-parallel workers (1: the engine in
    its Ray Tune trial's process; more: a Ray Train run the trial drives), each holding ``cpus`` CPUs (also its torch threads)
    and ``gpus`` GPUs (a fraction packs several cells on one GPU). The cost measurement runs alone on a node
    with at least ``measure_cpus`` CPUs and ``measure_gpus`` GPUs, reserving the whole node (as soon as
    one is free),
    and times with ``measure_cpus`` torch threads (``measure_gpus: 1``: latency on a GPU,
    ``0``: on CPU); ``retries`` restarts a cell after a lost worker, trial or node, from its latest
    checkpoint (never after an exception in the cell); ``memory_gb`` (0: none)
    reserves host memory for each task in Ray's scheduler and caps the task's process at
    it (its resident memory, the Ray worker's own ~1 GB included, its data-loading processes not;
    ``harness.engine.memory``), so a cell that needs more fails with "out of memory: <process>
    reached N GB of M" instead of the kernel's OOM killer taking the node, and the cells beside
    it, down."""

    cpus: float = bounded(1, above=0)
    gpus: float = bounded(0, min=0)
    workers: int = bounded(1, min=1)
    measure_cpus: float = bounded(1, above=0)
    measure_gpus: float = bounded(0, min=0)
    retries: int = bounded(3, min=0)
    memory_gb: float = bounded(0, min=0)

    def cell(self) -> CellResources:
        """What each cell's training holds, as the engine takes it."""
        return CellResources(self.workers, self.cpus, self.gpus, self.memory_gb, self.retries)


@dataclass
class GridSpec:
    """Axes ``backbones`` x ``classifiers`` x ``datasets`` x ``seeds`` x ``necks``; shared
    config sections ``model``/``data``/``train``/``measure``/``eval``/``trunk`` (as in ``RunConfig``;
    ``eval`` is the test protocol, ``trunk`` a trained backbone and neck every cell starts from,
    frozen unless ``trunk.train``); ``dataset_overrides``, ``backbone_overrides`` and
    ``classifier_overrides`` map a name to config sections applied to that axis value's cells,
    in that order (e.g. a dataset's own test protocol, a backbone's weights); ``overrides``,
``key=value`` strings applied to every cell last (``segheads grid --set``), never to an axis key;
``imports``, plugin modules imported before the axes are checked (``harness.plugins``, as
MMSegmentation's ``custom_imports``)."""

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
    eval: dict = field(default_factory=dict)
    trunk: dict = field(default_factory=dict)
    dataset_overrides: dict = field(default_factory=dict)
    backbone_overrides: dict = field(default_factory=dict)
    classifier_overrides: dict = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    overrides: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)


_AXES = ("backbones", "classifiers", "datasets", "seeds", "necks")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GridSpec:
    """Read and validate a grid spec before anything runs: keys, types and value ranges,
    axes (non-empty, no repeats, registered names), override sections and resources; then
    ``overrides`` (``key=value``, as ``segheads grid --set``) added to the spec's own.
    ``InputError`` naming the file, the key path and what was expected otherwise."""
    path = Path(path)
    data = read_yaml(path, "grid spec")
    try:
        spec = from_dict(GridSpec, data if data is not None else {})
        spec.overrides = [*spec.overrides, *overrides]
        load_plugins(spec.imports, origin="imports")
        return _check_spec(spec)
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
    for item in spec.overrides:  # a bad key or value named before any cell is built
        if item.partition("=")[0] in _AXIS_KEYS:
            raise InputError(f"override {item!r}: {item.partition('=')[0]} is a grid axis; list its values in the spec")
        try:
            apply_overrides(RunConfig(), [item])
        except InputError as exc:
            message = str(exc)
            raise InputError(message if message.startswith("override ") else f"override {item!r}: {message}") from None
    from_dict(RunConfig, {section: getattr(spec, section) for section in _SECTIONS})
    for kind, axis in (("dataset_overrides", spec.datasets), ("backbone_overrides", spec.backbones),
                       ("classifier_overrides", spec.classifiers)):
        overrides = getattr(spec, kind)
        stray = sorted(set(overrides) - set(axis))
        if stray:
            raise InputError(f"{kind}: {', '.join(stray)} not on the grid's axis; axis values: {', '.join(axis)}")
        for name, sections in overrides.items():
            from_dict(RunConfig, _sections(sections, f"{kind}.{name}"), f"{kind}.{name}")
            if "neck" in sections.get("model", {}) and kind == "dataset_overrides":
                raise InputError(f"{kind}.{name}.model.neck: a neck is set per backbone or classifier, not per dataset")
            if "neck" in sections.get("model", {}) and len(spec.necks) > 1:
                raise InputError(f"{kind}.{name}.model.neck: a neck can be set per backbone or classifier only when "
                                 f"the necks axis has one value (it has {spec.necks})")
            if "neck" in sections.get("model", {}):
                _check_named(f"{kind}.{name}.model.neck", _registered("neck", list_necks()), sections["model"]["neck"])
    gpus = spec.resources.gpus
    if gpus > 1 and gpus != int(gpus):
        raise InputError(f"resources.gpus={gpus:g}; a task can share one GPU (a fraction) or take whole GPUs, "
                         "not a fraction above 1")
    return spec


def _registered(kind: str, known: list[str]):
    """A check that ``name`` is one of ``known``, raising ``unknown_name_error`` otherwise."""
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


def _check_warmup(train) -> None:
    """A warm-up the spec sets must fit in the schedule: the learning rate would never reach ``train.lr``."""
    if train.warmup_iters > train.iters:
        raise InputError(f"train.warmup_iters={train.warmup_iters} is longer than train.iters={train.iters}: the "
                         "learning rate would never reach train.lr; shorten it too (e.g. --set train.warmup_iters=0)")


def expand(spec: GridSpec) -> list[RunConfig]:
    """One ``RunConfig`` per cell, in axis order (dataset, backbone, neck, classifier, seed):
    defaults <- shared sections <- dataset, backbone, classifier overrides <- axis values,
    except that a backbone's or (first) a classifier's override of ``model.neck`` replaces the
    (single) necks axis value for its cells (e.g. ``hrnetv2_w48: {model: {neck: ocr}}``,
    ``ece: {model: {neck: stages}}``); ``overrides`` last. A warm-up the spec sets that is longer
    than a cell's schedule is an ``InputError``. Each cell's
    classifier kwargs are resolved (``harness.modeling.resolve_classifier``) and its plugins stamped
(``harness.plugins.with_plugins``)."""
    threads = max(1, int(spec.resources.cpus))
    cells = []
    for dataset in spec.datasets:
        for backbone in spec.backbones:
            for neck in spec.necks:
                for classifier in spec.classifiers:
                    for seed in spec.seeds:
                        data = to_dict(RunConfig())
                        _merge(data, {s: getattr(spec, s) for s in _SECTIONS})
                        _merge(data, _sections(spec.dataset_overrides.get(dataset, {}), f"dataset_overrides.{dataset}"))
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
                            cell = with_plugins(resolve_classifier(apply_overrides(from_dict(RunConfig, data),
                                                                                   spec.overrides)))
                            sources = [spec.train] + [overrides.get(value, {}).get("train", {}) for overrides, value in (
                                (spec.dataset_overrides, dataset), (spec.backbone_overrides, backbone),
                                (spec.classifier_overrides, classifier))]
                            if any("warmup_iters" in s for s in sources) or any(
                                    o.partition("=")[0] == "train.warmup_iters" for o in spec.overrides):
                                _check_warmup(cell.train)
                            cells.append(cell)
                        except InputError as exc:
                            raise InputError(f"cell {classifier}@{backbone}/{neck} {dataset} s{seed}: {exc}") from None
    return cells


def validate_cells(cells: list[RunConfig], workers: int = 1) -> None:
    """What needs a whole cell's config, for every cell, before any runs: the global batch splits
    over ``workers`` x ``train.accumulate``, the classifier's hyper-parameters (names are checked by
    ``load_grid``; value ranges, the measure settings' included, by ``from_dict`` as ``expand``
    builds each cell)."""
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


def start_order(cells: list[RunConfig]) -> tuple[list[tuple[RunConfig, float | None]], str | None]:
    """The order a grid starts its cells in, each with its estimated training FLOPs
    (``harness.measure.training_flops``): costliest first, ties in the given order, so that the
    longest cells do not start last and leave the rest of the cluster idle while they finish
    (longest processing time first). Returns (cells and costs, None); when a cell's cost cannot be
    estimated, (the given order with no costs, why): the order is a hint, and the grid still runs."""
    costs = []
    for cfg in cells:
        try:
            costs.append(training_flops(cfg))
        except Exception as exc:  # e.g. an op without a meta kernel in a user's model
            return [(c, None) for c in cells], f"no training cost estimate for {describe(cfg)}: {one_line(exc)}"
    return sorted(zip(cells, costs), key=lambda pair: -pair[1]), None


def describe(cfg: RunConfig) -> str:
    return f"{cfg.model.classifier}@{cfg.model.backbone}/{cfg.model.neck} {cfg.data.dataset} s{cfg.train.seed}"
