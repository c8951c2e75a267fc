"""One cell, end to end, on one worker or as a Ray Train run: dataset -> ``Segmentor`` -> train ->
evaluate -> (measure) -> ``CellResult``."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from harness.config import EvalConfig, RunConfig, config_hash, to_dict
from harness.data import (
    AugmentConfig,
    DataParallelLayout,
    DatasetCatalog,
    MetadataCatalog,
    SemSegMapper,
    build_test_loader,
    build_train_loader,
    dataset_splits,
    label_space,
    split_batch,
)
from harness.engine import checkpoint
from harness.engine.context import LocalContext, WorkerContext
from harness.engine.features import cache_key, feature_batches, trunk_features
from harness.engine.hooks import CheckpointHook, EvalHook, MetricsHook, save
from harness.engine.launch import RESULT_FILE, launch, needs_ray_train, ray_session, read_cell
from harness.engine.trainer import Trainer
from harness.engine.trunk import attach_trunk, read_trunk
from harness.errors import InputError
from harness.evaluation import SUMMARY_METRICS, SemSegEvaluator, diagnose, evaluate, split_diagnostics
from harness.measure import check_settings, count_parameters, fingerprint, measure_model
from harness.modeling import Segmentor, build_segmentor, load_segmentor, resolve_classifier
from harness.results import FINISHED, CellResult


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cell_tags(cfg: RunConfig, digest: str | None = None) -> dict[str, str]:
    """The tags every CellResult and MLflow run carries (docs/architecture.md, "Tracking"), and
    ``trunk`` (its weights' digest) on a cell that starts from a trunk."""
    tags = {"backbone": cfg.model.backbone, "classifier": cfg.model.classifier, "dataset": cfg.data.dataset,
            "seed": str(cfg.train.seed), "neck": cfg.model.neck, "config_hash": digest or config_hash(cfg)}
    if cfg.trunk.enabled:  # cells on one trunk: their deltas hold no backbone noise
        tags["trunk"] = cfg.trunk.digest or str(cfg.trunk.run or cfg.trunk.checkpoint)
    return tags


def resolve_sync_bn(setting: bool | str, world_size: int, device: torch.device) -> bool:
    """``model.sync_bn``: auto = SyncBatchNorm when the cell has several workers on CUDA (it is
    CUDA-only); ``true`` on the CPU is an ``InputError``; ``true`` in one process without a
    process group is plain BatchNorm (the same statistics)."""
    if setting == "auto":
        return world_size > 1 and device.type == "cuda"
    if setting and device.type != "cuda":
        raise InputError(f"model.sync_bn=true: SyncBatchNorm needs CUDA and this cell runs on {device}; "
                         "use model.sync_bn=auto or false")
    # One process without a process group: SyncBatchNorm would normalise exactly as BatchNorm does.
    return bool(setting) and (world_size > 1 or torch.distributed.is_initialized())


def default_storage(cfg: RunConfig) -> Path:
    """Where ``segheads run`` keeps checkpoints unless ``--storage`` says: <output_dir>/<experiment>/checkpoints."""
    return Path(cfg.output_dir) / cfg.experiment / "checkpoints"


def run_cell(cfg: RunConfig, resume: bool = False, log=print, workers: int = 1,
             storage: str | Path | None = None, retries: int = 3) -> tuple[CellResult, Segmentor]:
    """Train, evaluate and (``measure.enabled``) measure one cell: (its ``CellResult``, the trained model). One worker trains in this process (checkpoints under
    ``storage``/<config_hash> when given; ``resume`` continues from the newest); ``workers`` > 1,
    or a URI ``storage``, is a Ray Train run under ``storage`` (local Ray on loopback unless one
    is running) that restarts lost workers ``retries`` times and resumes by itself."""
    if needs_ray_train(workers, storage):
        threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // workers)  # each worker's share of the cores
        resolved = resolve_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads)))
        split_batch(cfg.data.batch_size, workers, cfg.train.accumulate)
        with ray_session(None):
            result, weights = read_cell(launch(train_cell, resolved, workers, storage or default_storage(cfg),
                                               cpus=threads, retries=retries))
        model, device = load_segmentor(resolved, weights), resolve_device(cfg.device)
        model.to(device)
    else:
        device = resolve_device(cfg.device)
        run_dir = Path(storage) / config_hash(resolve_classifier(cfg)) if storage is not None else None
        result, model = train_cell(cfg, LocalContext(device, run_dir, resume), log)
    if cfg.measure.enabled:
        add_measurement(result, model, cfg, device, cfg.train.threads, log)
    return result, model


def train_cell(cfg: RunConfig, context: WorkerContext, log=print) -> tuple[CellResult | None, Segmentor]:
    """The engine's work for one cell on one worker: build the model (SyncBN per
    ``model.sync_bn``, DDP through ``context``), resume from ``context``'s checkpoint, train this
    worker's share of each step with the hooks, then on rank 0 evaluate and write the final
    checkpoint with the CellResult. Returns (rank 0's CellResult, None elsewhere; the trained model)."""
    cfg = resolve_classifier(cfg)
    splits = dataset_splits(cfg.data.dataset)
    if cfg.measure.enabled:
        check_settings(cfg.measure)  # before training, not after
    meta = MetadataCatalog.get(splits["train"])
    classes, ignore = label_space(cfg.data.dataset)
    device, d, t = context.device, cfg.data, cfg.train
    layout = DataParallelLayout(d.batch_size, context.world_size, context.rank, t.accumulate)
    split_batch(d.batch_size, context.world_size, t.accumulate)
    sync_bn = resolve_sync_bn(cfg.model.sync_bn, context.world_size, device)
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    seed_everything(t.seed)  # every worker builds the same initial model
    digest = config_hash(cfg)

    train_records = DatasetCatalog.get(splits["train"])
    val_records = DatasetCatalog.get(splits["val"])
    model = build_segmentor(cfg, len(classes), ignore)
    if cfg.trunk.enabled:
        attach_trunk(model, read_trunk(cfg.trunk)[0], cfg.trunk)
    model.to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trainer = Trainer(model, None, t, device, module=context.wrap(model), micro_index=layout.micro_index,
                      micro_batches=context.world_size * t.accumulate)
    resumed = context.resume_folder()
    if resumed is not None:
        trainer.load_state_dict(checkpoint.read(resumed, context.rank))
    mapper = SemSegMapper(len(classes), ignore, AugmentConfig.from_config(d, meta.get("allow_hflip", True)))
    cached = cfg.trunk.frozen and all(mapper.is_fixed(record) for record in train_records)
    if cached:  # the trunk's input never changes: its features are computed once and every step reads them
        began = time.perf_counter()
        features, source = trunk_features(model, train_records, mapper, device, d.eval_batch_size,
                                          context.cache_folder, cache_key(cfg, train_records))
        log(f"[segheads] {cfg.trunk.describe()}: features of {len(features)} training images "
            f"({features.nbytes() / 2**20:.0f} MiB) {source} in {time.perf_counter() - began:.1f} s")
        trainer.batches = feature_batches(features, t.seed, layout, trainer.iteration)
    else:
        trainer.batches = build_train_loader(train_records, mapper, d.batch_size, d.num_workers, t.seed, layout,
                                             trainer.iteration, device.type == "cuda")

    def val_loader():
        return build_test_loader(val_records, SemSegMapper(len(classes), ignore), d.eval_batch_size, d.num_workers)

    def validate(evaluator: SemSegEvaluator | None = None, protocol: EvalConfig = cfg.eval) -> dict[str, float]:
        return evaluate(model, val_loader(), evaluator or SemSegEvaluator(len(classes), ignore, classes), device, protocol)

    trainer.register_hooks([MetricsHook(context, t.log_period), CheckpointHook(context, t.checkpoint_period),
                            EvalHook(context, t.eval_period, validate)])
    log(f"[segheads] {cfg.model.classifier} on {cfg.model.backbone}/{cfg.model.neck}, {cfg.data.dataset} "
        f"({len(train_records)} train / {len(val_records)} val), {t.iters} iters on {device}"
        + (f" x {context.world_size} workers" if context.world_size > 1 else "")
        + (f", resumed at iteration {trainer.iteration}" if resumed is not None else "")
        + f"; evaluated {cfg.eval.describe_all()}" + (f"; {cfg.trunk.describe()}" if cfg.trunk.enabled else ""))
    trained = trainer.train()
    losses = [row for row in trained.history if "loss/total" in row]
    for row in losses[:: max(1, len(losses) // 10)] + losses[-1:]:
        log(f"  iter {row['iteration']:>6}  loss {row['loss/total']:.4f}  lr {row['lr']:.2e}")

    result = None
    if context.rank == 0:
        began = time.perf_counter()
        evaluator = SemSegEvaluator(len(classes), ignore, classes)
        evaluation = validate(evaluator)
        for name in cfg.eval.extra:  # further protocols (multi-scale + flip): summary metrics under their name
            summary = validate(protocol=cfg.eval.protocol(name))
            evaluation.update({f"{key}/{name}": summary[key] for key in SUMMARY_METRICS})
        diagnostics, arrays = split_diagnostics(diagnose(model, val_loader(), device))
        metrics = {
            **evaluation, **diagnostics, **count_parameters(model),
            "train/seconds": trained.seconds,
            "train/iters_per_second": trained.iterations / max(trained.seconds, 1e-9),
            "eval/seconds": time.perf_counter() - began,
        }
        if losses:
            metrics.update({k: v for k, v in losses[-1].items() if k.startswith("loss/")})
        result = CellResult(
            FINISHED, to_dict(cfg), digest, cell_tags(cfg, digest), metrics,
            per_class={"class": classes, "IoU": [evaluation[f"IoU-{c}"] for c in classes],
                       "ACC": [evaluation[f"ACC-{c}"] for c in classes]},
            history=trained.history,
            per_image=evaluator.per_image_counts(), diagnostics=arrays or None,
            environment={**fingerprint(device), "engine": {
                "workers": context.world_size, "accumulate": t.accumulate, "micro_batch": layout.micro_batch,
                "precision": t.precision, "sync_bn": sync_bn, "resumed_at": trainer.start_iteration,
                **({"trunk_features": "cached" if cached else "live"} if cfg.trunk.frozen else {}),
                **_weights_params(model)}})
    if context.keeps_checkpoints:
        save(context, trainer, {"iteration": trainer.iteration, "finished": True},
             lambda folder: (folder / RESULT_FILE).write_text(result.to_json() if result else "null"))
    return result, model


def _weights_params(model: Segmentor) -> dict[str, str]:
    """What loading the backbone's first weights did (``backbones.weights.WeightsReport``), as engine params."""
    report = getattr(model.backbone, "weights", None)
    return report.params() if report is not None else {}


def add_measurement(result: CellResult, model: Segmentor, cfg: RunConfig, device: torch.device, threads: int,
                    log=print) -> None:
    """Measure ``model``'s cost with ``cfg.measure`` on ``threads`` threads (0: all cores) and add it
    to ``result`` (metrics and ``measurement``)."""
    began = time.perf_counter()
    measured, result.measurement = measure_model(model, cfg.measure, device, threads)
    result.metrics.update(measured)
    batch = result.measurement["measured_batch_sizes"][0]
    log(f"[segheads] measured at {cfg.measure.image_size}px in {time.perf_counter() - began:.1f} s: "
        f"{measured['gflops/total']:.2f} GFLOPs, p50 {measured[f'latency/bs{batch}/p50_ms']:.1f} ms at batch {batch}")
