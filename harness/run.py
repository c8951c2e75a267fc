"""One cell, end to end: dataset -> Segmentor -> train -> evaluate -> measure -> CellResult."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from backbones import build_backbone, build_neck
from backbones.necks import neck_accepts, neck_uses_auxiliary
from classifiers import build_classifier, classifier_accepts, resolve_classifier_kwargs
from harness.config import EvalConfig, RunConfig, config_hash, to_dict
from harness.data import (
    AugmentConfig,
    DataParallelLayout,
    DatasetCatalog,
    MetadataCatalog,
    SemSegMapper,
    build_test_loader,
    build_train_loader,
    split_batch,
)
from harness.data.builtin import SPLIT_NAMES
from harness.engine import CheckpointHook, EvalHook, LocalContext, MetricsHook, Trainer, WorkerContext, checkpoint
from harness.engine.hooks import save
from harness.engine.launch import RESULT_FILE, needs_ray_train
from harness.errors import InputError
from harness.evaluate import evaluate
from harness.measure import check_settings, count_parameters, fingerprint, measure_model
from harness.metrics import SUMMARY_METRICS, SemSegEvaluator
from harness.model import AuxiliaryFCNHead, Segmentor, mmseg_init
from harness.pretrain import INITIAL_WEIGHTS, resolve_backbone_kwargs, without_checkpoint

SPLITS = ("train", "val")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def dataset_splits(name: str) -> dict[str, str]:
    """Catalog names of ``name``'s train and val splits (``<name>_train``/``<name>_val``, or
    ``SPLIT_NAMES``); ``InputError`` listing the datasets that have both."""
    splits = SPLIT_NAMES.get(name) or {split: f"{name}_{split}" for split in SPLITS}
    if not all(s in DatasetCatalog for s in splits.values()):
        bases = {n.removesuffix("_train") for n in DatasetCatalog.list() if n.endswith("_train")}
        known = sorted({b for b in bases if f"{b}_val" in DatasetCatalog and _is_sem_seg(f"{b}_train")}
                       | set(SPLIT_NAMES))
        raise InputError(f"unknown dataset {name!r}: needs {splits['train']!r} and {splits['val']!r} registered; "
                         f"known datasets: {', '.join(known)}")
    return splits


def _is_sem_seg(split: str) -> bool:
    """Whether ``split``'s metadata describes semantic segmentation (detectron2's catalogs also
    hold detection, instance and panoptic datasets)."""
    meta = MetadataCatalog.get(split)
    return meta.get("stuff_classes") is not None and "sem_seg" in meta.get("evaluator_type", "sem_seg")


def resolve_classifier(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``model.classifier_kwargs`` resolved: a paper head's preset spelled out
    option by option, so the settings a cell runs with are its logged params and change
    its ``config_hash``. Idempotent; heads without presets keep their kwargs as given."""
    kwargs = resolve_classifier_kwargs(cfg.model.classifier, cfg.model.classifier_kwargs)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, classifier_kwargs=kwargs))


def build_segmentor(cfg: RunConfig, num_classes: int, ignore_label: int) -> Segmentor:
    """Backbone (``checkpoint: builtin:digits`` pretrained on first use, ``harness.pretrain``),
    neck (``model.neck_kwargs``), classifier head and, when the neck trains
    with one by default or ``neck_kwargs.auxiliary`` says so, the auxiliary FCN head;
    ``model.init: mmseg`` initialises the decoder as MMSegmentation does (``mmseg_init``)."""
    m = cfg.model
    backbone = build_backbone(m.backbone, **resolve_backbone_kwargs(m.backbone, m.backbone_kwargs))
    neck_kwargs = dict(m.neck_kwargs)
    use_auxiliary = neck_kwargs.pop("auxiliary", neck_uses_auxiliary(m.neck))
    if neck_accepts(m.neck, "num_classes"):  # a decoder with its own prediction (OCRNet's regions)
        neck_kwargs.setdefault("num_classes", num_classes)
    try:
        neck = build_neck(m.neck, backbone.channels, backbone.strides, m.embed_dim, **neck_kwargs)
    except TypeError as exc:
        raise InputError(f"model.neck_kwargs {neck_kwargs}: not options of neck {m.neck!r} ({exc})") from None
    auxiliary = None
    if use_auxiliary:
        if len(backbone.channels) < 3:
            raise InputError(f"model.neck_kwargs.auxiliary: the auxiliary head reads stage 3, and backbone "
                             f"{m.backbone!r} has {len(backbone.channels)} stages")
        auxiliary = AuxiliaryFCNHead(backbone.channels[2], num_classes, ignore_label)
    kwargs = dict(m.classifier_kwargs)
    if classifier_accepts(m.classifier, "stage_channels"):  # a head that reads every stage learns their widths
        kwargs.setdefault("stage_channels", getattr(neck, "pyramid_channels", [m.embed_dim] * len(backbone.channels)))
    elif hasattr(neck, "pyramid_channels"):
        raise InputError(f"neck {m.neck!r} passes the backbone's stages through unchanged; classifier "
                         f"{m.classifier!r} needs a D-wide neck (mlp, fpn, ...)")
    classifier = build_classifier(m.classifier, num_classes=num_classes, in_channels=m.embed_dim,
                                  ignore_index=ignore_label, **kwargs)
    model = Segmentor(backbone, neck, classifier, auxiliary)
    if m.init == "mmseg":
        mmseg_init(model)
    return model


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """``model``'s state dict as ``torch.save`` writes it (what a FINISHED cell logs as ``weights.pt``)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def load_segmentor(cfg: RunConfig, weights: bytes | str | Path) -> Segmentor:
    """``cfg``'s model with trained weights (a state dict as bytes or a file, read with
    ``weights_only=True``), on the CPU, in eval mode. The label space is ``cfg``'s dataset's."""
    source = io.BytesIO(weights) if isinstance(weights, bytes) else weights
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"weights {'(bytes)' if isinstance(weights, bytes) else weights}: not a state dict "
                         f"torch.load can read ({type(exc).__name__})") from None
    classes, ignore = label_space(cfg.data.dataset)
    # The trained weights replace every parameter, so the backbone's initial ones (a file that
    # may live on another machine, builtin weights not made here yet, the model hub's) are not loaded.
    bare = without_checkpoint(cfg.model.backbone_kwargs, INITIAL_WEIGHTS)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_kwargs=bare))
    model = build_segmentor(cfg, len(classes), ignore)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"weights do not fit {cfg.model.classifier}@{cfg.model.backbone}/{cfg.model.neck} with "
                         f"{len(classes)} classes: {str(exc).splitlines()[0]}") from None
    return model.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_space(dataset: str) -> tuple[list[str], int]:
    """(class names, ignore label) of ``dataset``'s training split."""
    meta = MetadataCatalog.get(dataset_splits(dataset)["train"])
    return list(meta.stuff_classes), meta.get("ignore_label", 255)


def cell_tags(cfg: RunConfig, digest: str | None = None) -> dict[str, str]:
    """The tags every CellResult and MLflow run carries (docs/architecture.md, "Tracking")."""
    return {"backbone": cfg.model.backbone, "classifier": cfg.model.classifier, "dataset": cfg.data.dataset,
            "seed": str(cfg.train.seed), "neck": cfg.model.neck, "config_hash": digest or config_hash(cfg)}


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
             storage: str | Path | None = None, retries: int = 3) -> tuple[dict, Segmentor]:
    """Train, evaluate and (``measure.enabled``) measure one cell: (the JSON-serialisable
    CellResult, the trained model). One worker trains in this process (checkpoints under
    ``storage``/<config_hash> when given; ``resume`` continues from the newest); ``workers`` > 1,
    or a URI ``storage``, is a Ray Train run under ``storage`` (local Ray on loopback unless one
    is running) that restarts lost workers ``retries`` times and resumes by itself."""
    if needs_ray_train(workers, storage):
        from harness.engine.launch import init_ray, launch, read_cell

        threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // workers)  # each worker's share of the cores
        resolved = resolve_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads)))
        split_batch(cfg.data.batch_size, workers, cfg.train.accumulate)
        started = init_ray(None)
        try:
            result, weights = read_cell(launch(train_cell, resolved, workers, storage or default_storage(cfg),
                                               cpus=threads, retries=retries))
        finally:
            if started:
                import ray

                ray.shutdown()
        model, device = load_segmentor(resolved, weights), resolve_device(cfg.device)
        model.to(device)
    else:
        device = resolve_device(cfg.device)
        run_dir = Path(storage) / config_hash(resolve_classifier(cfg)) if storage is not None else None
        result, model = train_cell(cfg, LocalContext(device, run_dir, resume), log)
    if cfg.measure.enabled:
        add_measurement(result, model, cfg, device, log)
    return result, model


def train_cell(cfg: RunConfig, context: WorkerContext, log=print) -> tuple[dict | None, Segmentor]:
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
    model = build_segmentor(cfg, len(classes), ignore).to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trainer = Trainer(model, None, t, device, module=context.wrap(model), micro_index=layout.micro_index,
                      micro_batches=context.world_size * t.accumulate)
    resumed = context.resume_folder()
    if resumed is not None:
        trainer.load_state_dict(checkpoint.read(resumed, context.rank))
    augment = AugmentConfig(crop_size=d.crop_size, scale_range=tuple(d.scale_range),
                            hflip_prob=d.hflip_prob if meta.get("allow_hflip", True) else 0.0,
                            color_jitter=d.color_jitter)
    trainer.batches = build_train_loader(train_records, SemSegMapper(len(classes), ignore, augment), d.batch_size,
                                         d.num_workers, t.seed, layout, trainer.iteration, device.type == "cuda")

    def validate(evaluator: SemSegEvaluator | None = None, protocol: EvalConfig = cfg.eval) -> dict[str, float]:
        loader = build_test_loader(val_records, SemSegMapper(len(classes), ignore), d.eval_batch_size, d.num_workers)
        return evaluate(model, loader, evaluator or SemSegEvaluator(len(classes), ignore, classes), device, protocol)

    trainer.register_hooks([MetricsHook(context, t.log_period), CheckpointHook(context, t.checkpoint_period),
                            EvalHook(context, t.eval_period, validate)])
    log(f"[segheads] {cfg.model.classifier} on {cfg.model.backbone}/{cfg.model.neck}, {cfg.data.dataset} "
        f"({len(train_records)} train / {len(val_records)} val), {t.iters} iters on {device}"
        + (f" x {context.world_size} workers" if context.world_size > 1 else "")
        + (f", resumed at iteration {trainer.iteration}" if resumed is not None else "")
        + f"; evaluated {cfg.eval.describe_all()}")
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
        metrics = {
            **evaluation, **count_parameters(model),
            "train/seconds": trained.seconds,
            "train/iters_per_second": trained.iterations / max(trained.seconds, 1e-9),
            "eval/seconds": time.perf_counter() - began,
        }
        if losses:
            metrics.update({k: v for k, v in losses[-1].items() if k.startswith("loss/")})
        result = {
            "status": "FINISHED",
            "config": to_dict(cfg),
            "config_hash": digest,
            "tags": cell_tags(cfg, digest),
            "metrics": metrics,
            "per_class": {"class": classes, "IoU": [evaluation[f"IoU-{c}"] for c in classes],
                          "ACC": [evaluation[f"ACC-{c}"] for c in classes]},
            "history": trained.history,
            "per_image": evaluator.per_image_counts(),
            "environment": {**fingerprint(device), "engine": {
                "workers": context.world_size, "accumulate": t.accumulate, "micro_batch": layout.micro_batch,
                "precision": t.precision, "sync_bn": sync_bn, "resumed_at": trainer.start_iteration,
                **_weights_params(model)}},
            "measurement": None,
        }
    if context.keeps_checkpoints:
        save(context, trainer, {"iteration": trainer.iteration, "finished": True},
             lambda folder: (folder / RESULT_FILE).write_text(json.dumps(result)))
    return result, model


def _weights_params(model: Segmentor) -> dict[str, str]:
    """What loading the backbone's first weights did (``backbones.weights.WeightsReport``), as engine params."""
    report = getattr(model.backbone, "weights", None)
    return report.params() if report is not None else {}


def add_measurement(result: dict, model: Segmentor, cfg: RunConfig, device: torch.device, log=print) -> None:
    """Measure ``model``'s cost with ``cfg.measure`` and add it to ``result`` (metrics and ``measurement``)."""
    began = time.perf_counter()
    measured, result["measurement"] = measure_model(model, cfg.measure, device, cfg.train.threads)
    result["metrics"].update(measured)
    batch = result["measurement"]["measured_batch_sizes"][0]
    log(f"[segheads] measured at {cfg.measure.image_size}px in {time.perf_counter() - began:.1f} s: "
        f"{measured['gflops/total']:.2f} GFLOPs, p50 {measured[f'latency/bs{batch}/p50_ms']:.1f} ms at batch {batch}")
