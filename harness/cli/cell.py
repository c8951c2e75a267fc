"""``segheads run``, ``measure`` and ``predict``: one cell, one model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import engine
from harness import metric_keys as keys
from harness.cli.parser import MEASURE_FLAGS, RUN_FLAGS
from harness.config import RunConfig, apply_overrides
from harness.data import label_space
from harness.errors import InputError
from harness.evaluation import dataset_sources, folder_sources, write_predictions
from harness.logs import logger
from harness.measure import format_measurement, measure_model
from harness.modeling import build_segmentor
from harness.tracking import TRUNKS, load_run, log_cell, logged_measure_threads, resolve_tracking_uri, resolve_trunk


def _check_json(path) -> None:
    if path is not None and not path.parent.is_dir():
        raise InputError(f"--json {path}: folder {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    flags = [f"{key}={getattr(args, flag)}" for flag, key in RUN_FLAGS.items() if getattr(args, flag) is not None]
    cfg = apply_overrides(RunConfig(), flags + list(args.set))
    cfg.tracking_uri = resolve_tracking_uri(args.tracking_uri)
    _check_json(args.json)
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected >= 1")
    storage = args.storage or engine.default_storage(cfg)
    if cfg.trunk.enabled:  # its weights as a file the workers read, pinned by digest
        cfg.trunk = resolve_trunk(cfg.trunk, cfg.tracking_uri, None if "://" in str(storage) else Path(storage) / TRUNKS)
    trained = engine.run(cfg, engine.CellResources(workers=args.workers), storage, resume=args.resume)
    result = trained.result
    if args.json is not None:
        args.json.write_text(result.to_json())
    if not args.no_tracking:
        run_id = log_cell(result, cfg.tracking_uri, cfg.experiment, weights=trained.weights())
        logger.info(f"logged MLflow run {run_id} to {cfg.tracking_uri} (experiment {cfg.experiment!r})")
    m = result.metrics
    print(f"{'classifier':<12}{'backbone':<24}{'mIoU':>8}{'fwIoU':>8}{'mACC':>8}{'pACC':>8}{'head params':>13}")
    print(f"{cfg.model.classifier:<12}{cfg.model.backbone:<24}{m['mIoU']:>8.2f}{m['fwIoU']:>8.2f}"
          f"{m['mACC']:>8.2f}{m['pACC']:>8.2f}{m[keys.params('head')]:>13,}")
    return 0


def measure(args: argparse.Namespace) -> int:
    flags = [f"{key}={getattr(args, flag)}" for flag, key in MEASURE_FLAGS.items() if getattr(args, flag) is not None]
    flags += [f"measure.{flag}=true" for flag in ("channels_last", "compile") if getattr(args, flag)]
    overrides = flags + list(args.set)
    _check_json(args.json)
    if args.run:
        uri = resolve_tracking_uri(args.tracking_uri)
        logged, model = load_run(args.run, uri)
        cfg = apply_overrides(logged, overrides)
        threads_given = any(o.split("=", 1)[0] == "train.threads" for o in overrides)
        # The threads its grid measured with (measurement.json), unless train.threads is given.
        threads = cfg.train.threads if threads_given else logged_measure_threads(args.run, uri, logged.train.threads)
        num_classes = model.classifier.num_classes
    else:
        cfg = apply_overrides(RunConfig(), overrides)
        if args.num_classes < 1:
            raise InputError(f"--num-classes {args.num_classes}: expected >= 1")
        num_classes, threads = args.num_classes, cfg.train.threads
        model = build_segmentor(cfg, num_classes, 255)
    device = engine.resolve_device(cfg.device)
    metrics, record = measure_model(model.to(device), cfg.measure, device, threads)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": {"backbone": cfg.model.backbone, "neck": cfg.model.neck,
                                                   "classifier": cfg.model.classifier, "num_classes": num_classes,
                                                   "embed_dim": cfg.model.embed_dim, "run": args.run},
                                         "metrics": metrics, "measurement": record}, indent=2))
    print(format_measurement(cfg, num_classes, metrics, record))
    return 0


def predict(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: expected >= 1")
    cfg, model = load_run(args.run, resolve_tracking_uri(args.tracking_uri))
    classes, ignore = label_space(cfg.data.dataset)
    if args.images is not None:
        sources = folder_sources(args.images, args.limit)
    else:
        sources = dataset_sources(args.dataset, len(classes), ignore, args.limit)
    written = write_predictions(model, classes, sources, args.out, cfg.eval)
    logger.info(f"{len(sources)} predictions of {cfg.model.classifier}@{cfg.model.backbone} "
                f"(run {args.run}) in {args.out}, legend {written[-1]}")
    return 0
