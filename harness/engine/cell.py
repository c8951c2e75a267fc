"""One cell on one worker (``train_cell``, the function every worker runs): build -> train ->
evaluate -> assemble its ``CellResult``; and the small policies it shares with ``run``
(``resolve_device``, ``resolve_sync_bn``, ``seed_everything``, ``cell_tags``, ``default_storage``)."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness import metric_keys as keys
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
from harness.engine.context import WorkerContext
from harness.engine.features import cache_key, feature_batches, trunk_features
from harness.engine.hooks import CheckpointHook, EvalHook, MetricsHook, save
from harness.engine.launch import RESULT_FILE
from harness.engine.trainer import Trainer, TrainResult
from harness.engine.trunk import attach_trunk, read_trunk
from harness.errors import InputError
from harness.evaluation import (
    SUMMARY_METRICS,
    SemSegEvaluator,
    diagnose,
    encode_label_map,
    evaluate,
    sample_indices,
    split_diagnostics,
)
from harness.logs import logger, progress_logger
from harness.measure import check_settings, count_parameters, fingerprint
from harness.modeling import Segmentor, build_segmentor, resolve_classifier
from harness.plugins import activate
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


@dataclass
class _Cell:
    """What one worker builds for a cell before it trains (``_build``): its resolved config, label
    space, records, the model and the ``Trainer`` (batches included, resumed when ``resumed``)."""

    cfg: RunConfig
    classes: list[str]
    ignore: int
    train_records: list[dict]
    val_records: list[dict]
    model: Segmentor
    trainer: Trainer
    layout: DataParallelLayout
    sync_bn: bool
    resumed: bool
    features: str | None  # a frozen trunk's features: "cached" (computed once) or "live"; None otherwise

    def validate(self, evaluator: SemSegEvaluator | None = None, protocol: EvalConfig | None = None) -> dict[str, float]:
        """The model on the validation split under ``protocol`` (the cell's own by default)."""
        return evaluate(self.model, self.val_loader(), evaluator or self.evaluator(), self.trainer.device,
                        protocol or self.cfg.eval)

    def val_loader(self):
        d = self.cfg.data
        return build_test_loader(self.val_records, SemSegMapper(len(self.classes), self.ignore), d.eval_batch_size,
                                 d.num_workers)

    def evaluator(self, keep_samples: bool = False) -> SemSegEvaluator:
        """The cell's evaluator; ``keep_samples``: keeping its predictions of the report's sample images."""
        keep = ({self.val_records[i]["file_name"]: i for i in sample_indices(len(self.val_records))}
                if keep_samples else None)
        return SemSegEvaluator(len(self.classes), self.ignore, self.classes, keep)


def train_cell(cfg: RunConfig, context: WorkerContext) -> tuple[CellResult | None, Segmentor]:
    """The engine's work for one cell on one worker: build the model (SyncBN per
    ``model.sync_bn``, DDP through ``context``) and its trainer (resumed from ``context``'s
    checkpoint), train this worker's share of each step with the hooks, then on rank 0 evaluate
    and assemble the CellResult, and write the final checkpoint with it. Returns (rank 0's
    CellResult, None elsewhere; the trained model)."""
    activate(cfg)  # its plugins, in this process: a Ray Train worker's too (engine.run imported the caller's)
    cell = _build(resolve_classifier(cfg), context)
    t = cell.cfg.train
    cell.trainer.register_hooks([MetricsHook(context, t.log_period), CheckpointHook(context, t.checkpoint_period),
                                 EvalHook(context, t.eval_period, cell.validate)])
    _log_start(cell, context)
    trained = cell.trainer.train()
    losses = [row for row in trained.history if keys.TOTAL_LOSS in row]
    for row in losses[:: max(1, len(losses) // 10)] + losses[-1:]:
        progress_logger.info(f"  iter {row['iteration']:>6}  loss {row[keys.TOTAL_LOSS]:.4f}  lr {row['lr']:.2e}")
    result = _assemble(cell, trained, context.world_size, *_evaluate(cell)) if context.rank == 0 else None
    if context.keeps_checkpoints:
        save(context, cell.trainer, {"iteration": cell.trainer.iteration, "finished": True},
             lambda folder: (folder / RESULT_FILE).write_text(result.to_json() if result else "null"))
    return result, cell.model


def _build(cfg: RunConfig, context: WorkerContext) -> _Cell:
    """Data, seeds, model (trunk attached, SyncBN), the checkpoint to resume from and the
    ``Trainer`` with its batches (a frozen trunk's cached features, or the loader) from there."""
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
    train_records = DatasetCatalog.get(splits["train"])
    val_records = DatasetCatalog.get(splits["val"])
    model = build_segmentor(cfg, len(classes), ignore)
    if cfg.trunk.enabled:
        attach_trunk(model, read_trunk(cfg.trunk)[0], cfg.trunk)
    model.to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    resumed = context.resume_folder()
    state = checkpoint.read(resumed, context.rank) if resumed is not None else None
    start = state["iteration"] if state is not None else 0
    mapper = SemSegMapper(len(classes), ignore, AugmentConfig.from_config(d, meta.get("allow_hflip", True)))
    features = None
    if cfg.trunk.frozen:
        features = "cached" if all(mapper.is_fixed(record) for record in train_records) else "live"
    if features == "cached":  # the trunk's input never changes: its features are computed once and every step reads them
        began = time.perf_counter()
        cache, source = trunk_features(model, train_records, mapper, device, d.eval_batch_size,
                                       context.cache_folder, cache_key(cfg, train_records))
        logger.info("%s: features of %d training images (%.0f MiB) %s in %.1f s", cfg.trunk.describe(), len(cache),
                    cache.nbytes() / 2**20, source, time.perf_counter() - began)
        batches = feature_batches(cache, t.seed, layout, start)
    else:
        batches = build_train_loader(train_records, mapper, d.batch_size, d.num_workers, t.seed, layout, start,
                                     device.type == "cuda")
    trainer = Trainer(model, batches, t, device, module=context.wrap(model), micro_index=layout.micro_index,
                      micro_batches=context.world_size * t.accumulate, state=state)
    return _Cell(cfg, classes, ignore, train_records, val_records, model, trainer, layout, sync_bn,
                 resumed is not None, features)


def _log_start(cell: _Cell, context: WorkerContext) -> None:
    cfg, t = cell.cfg, cell.cfg.train
    logger.info(f"{cfg.model.classifier} on {cfg.model.backbone}/{cfg.model.neck}, {cfg.data.dataset} "
                f"({len(cell.train_records)} train / {len(cell.val_records)} val), {t.iters} iters on "
                f"{context.device}" + (f" x {context.world_size} workers" if context.world_size > 1 else "")
                + (f", resumed at iteration {cell.trainer.iteration}" if cell.resumed else "")
                + f"; evaluated {cfg.eval.describe_all()}" + (f"; {cfg.trunk.describe()}" if cfg.trunk.enabled else ""))


def _evaluate(cell: _Cell) -> tuple[dict[str, float], SemSegEvaluator, dict, dict | None, float]:
    """Rank 0 after training: the cell's protocol (its per-image counts in the evaluator), each
    further protocol's summary metrics under ``<metric>/<protocol>``, the head's diagnostics.
    Returns (evaluation, evaluator, diagnostic scalars, diagnostic arrays, seconds)."""
    began = time.perf_counter()
    evaluator = cell.evaluator(keep_samples=True)
    evaluation = cell.validate(evaluator)
    for name in cell.cfg.eval.extra:  # further protocols (multi-scale + flip): summary metrics under their name
        summary = cell.validate(protocol=cell.cfg.eval.protocol(name))
        evaluation.update({keys.protocol_metric(key, name): summary[key] for key in SUMMARY_METRICS})
    diagnostics, arrays = split_diagnostics(diagnose(cell.model, cell.val_loader(), cell.trainer.device))
    return evaluation, evaluator, diagnostics, arrays, time.perf_counter() - began


def _assemble(cell: _Cell, trained: TrainResult, workers: int, evaluation: dict[str, float],
              evaluator: SemSegEvaluator, diagnostics: dict, arrays: dict | None, eval_seconds: float) -> CellResult:
    """The cell's ``CellResult``, built once: metrics (evaluation, diagnostics, parameters, timings,
    the last row's losses), per-class scores, history, per-image counts, the sample images'
    predictions, environment."""
    cfg, t, classes = cell.cfg, cell.cfg.train, cell.classes
    losses = [row for row in trained.history if keys.TOTAL_LOSS in row]
    metrics = {
        **evaluation, **diagnostics, **count_parameters(cell.model),
        keys.TRAIN_SECONDS: trained.seconds,
        keys.TRAIN_SPEED: trained.iterations / max(trained.seconds, 1e-9),
        keys.EVAL_SECONDS: eval_seconds,
        **({k: v for k, v in losses[-1].items() if keys.is_loss(k)} if losses else {}),
    }
    digest = config_hash(cfg)
    engine = {"workers": workers, "accumulate": t.accumulate, "micro_batch": cell.layout.micro_batch,
              "precision": t.precision, "sync_bn": cell.sync_bn, "resumed_at": cell.trainer.start_iteration,
              **({"trunk_features": cell.features} if cell.features else {}), **_weights_params(cell.model)}
    return CellResult(
        FINISHED, to_dict(cfg), digest, cell_tags(cfg, digest), metrics,
        per_class={"class": classes, "IoU": [evaluation[keys.class_iou(c)] for c in classes],
                   "ACC": [evaluation[keys.class_accuracy(c)] for c in classes]},
        history=trained.history, per_image=evaluator.per_image_counts(), diagnostics=arrays or None,
        predictions={str(i): encode_label_map(labels) for i, labels in sorted(evaluator.kept.items())} or None,
        environment={**fingerprint(cell.trainer.device), "engine": engine})


def _weights_params(model: Segmentor) -> dict[str, str]:
    """What loading the backbone's first weights did (``backbones.weights.WeightsReport``), as engine params."""
    report = getattr(model.backbone, "weights", None)
    return report.params() if report is not None else {}
