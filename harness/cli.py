"""The ``segheads`` command line (also ``python -m harness``).

Exit status: 0 success, 1 runtime failure, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import InputError

_RUN_FLAGS = {  # CLI flag -> config key
    "backbone": "model.backbone", "classifier": "model.classifier", "neck": "model.neck",
    "dataset": "data.dataset", "iters": "train.iters", "batch_size": "data.batch_size",
    "image_size": "data.image_size", "seed": "train.seed", "device": "device",
    "output_dir": "output_dir", "experiment": "experiment",
}


_MEASURE_FLAGS = {  # CLI flag -> config key
    "backbone": "model.backbone", "classifier": "model.classifier", "neck": "model.neck",
    "image_size": "measure.image_size", "batch_sizes": "measure.batch_sizes", "dtype": "measure.dtype",
    "threads": "train.threads", "device": "device",
}


def _batch_sizes(text: str) -> list[int]:
    """Comma-separated integers (batch sizes, class counts)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4, got {text!r}") from None
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segheads", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train, evaluate and log one classifier x backbone cell")
    run.add_argument("--backbone", help="timm model name or registered encoder (default resnet18)")
    run.add_argument("--classifier", help="registered classifier head (default softmax)")
    run.add_argument("--dataset", help="dataset with <name>_train/<name>_val registered (default digits_sem_seg)")
    run.add_argument("--neck", help="neck: mlp (default) or fpn")
    run.add_argument("--iters", type=int, help="training iterations")
    run.add_argument("--batch-size", type=int, help="training batch size")
    run.add_argument("--image-size", type=int, help="square training crop size")
    run.add_argument("--seed", type=int, help="random seed")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--output-dir", help="checkpoints go to OUTPUT_DIR/<experiment>/checkpoints unless --storage "
                                          "says (default outputs/)")
    run.add_argument("--experiment", help="MLflow experiment name (default segheads)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--json", type=Path, help="also write the cell result, all metrics included, to this file")
    run.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.01")
    run.add_argument("--resume", action="store_true",
                     help="one worker: continue from the cell's newest checkpoint under --storage, if any "
                          "(a Ray Train run, --workers > 1, always resumes)")
    run.add_argument("--workers", type=int, default=1,
                     help="data-parallel workers (default 1: this process; more: a Ray Train run on local Ray)")
    run.add_argument("--storage", help="checkpoint folder or URI Ray Train accepts "
                                       "(default OUTPUT_DIR/<experiment>/checkpoints)")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")

    measure = commands.add_parser("measure", help="params, FLOPs, latency, throughput and memory of one model")
    measure.add_argument("--backbone", help="timm model name or registered encoder (default resnet10t)")
    measure.add_argument("--classifier", help="registered classifier head (default softmax)")
    measure.add_argument("--neck", help="neck: mlp (default) or fpn")
    measure.add_argument("--num-classes", type=int, default=150, help="classes C (default 150, as ADE20K)")
    measure.add_argument("--image-size", type=int, help="square input size (default 512)")
    measure.add_argument("--batch-sizes", type=_batch_sizes, help="comma-separated batch sweep, e.g. 1,4 (default 1)")
    measure.add_argument("--dtype", help="float32 (default), bfloat16 or float16 (autocast)")
    measure.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    measure.add_argument("--compile", action="store_true", help="time the torch.compile'd model")
    measure.add_argument("--threads", type=int, help="CPU threads, pinned (default: all cores)")
    measure.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    measure.add_argument("--run", help="a logged cell's MLflow run id: its trained model, at its measure settings "
                         "and threads (flags and --set override them)")
    measure.add_argument("--tracking-uri", help="with --run: MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                         "sqlite:///mlflow.db)")
    measure.add_argument("--json", type=Path, help="also write metrics and how they were taken to this file")
    measure.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                         help="config overrides, e.g. model.embed_dim=512 measure.iters=50")

    predicting = commands.add_parser("predict", help="colour-coded predictions of a trained cell, with a legend")
    predicting.add_argument("--run", required=True, help="MLflow run id of a FINISHED cell (it holds weights.pt)")
    source = predicting.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered split (digits_sem_seg_val) or a dataset (its val split)")
    source.add_argument("--images", type=Path, help="a folder of images (jpg, png, ...; searched recursively)")
    predicting.add_argument("--out", type=Path, required=True, help="output folder")
    predicting.add_argument("--limit", type=int, help="at most this many images (default all)")
    predicting.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    grid = commands.add_parser("grid", help="run a classifier x backbone grid on Ray, logged to MLflow")
    grid.add_argument("spec", type=Path, help="grid spec YAML, e.g. jobs/quickstart.yaml")
    grid.add_argument("--address", help="Ray cluster address (default: start Ray locally on 127.0.0.1)")
    grid.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    grid.add_argument("--results", type=Path, help="results.jsonl to append to (default outputs/<grid name>/results.jsonl)")
    grid.add_argument("--max-concurrent", type=int, help="at most this many cells training at once")
    grid.add_argument("--storage", help="checkpoint folder or URI Ray Train accepts, e.g. s3://bucket/x or a shared "
                                        "filesystem (default: beside the results, outputs/<grid name>/checkpoints)")
    grid.add_argument("--dry-run", action="store_true", help="list the cells and their resources, run nothing")
    grid.add_argument("--no-tracking", action="store_true",
                      help="write results.jsonl only (log them later with `segheads import-results`)")
    grid.add_argument("--validate-data", action="store_true",
                      help="scan every image and label map of the grid's datasets before running (validate-data)")

    importing = commands.add_parser("import-results", help="log a grid's results.jsonl lines missing from MLflow")
    importing.add_argument("results", type=Path, help="the grid's results.jsonl")
    importing.add_argument("--experiment", help="MLflow experiment (default: the grid name the results carry)")
    importing.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    preparing = commands.add_parser("prepare-data", help="convert a downloaded dataset to the layout segheads reads")
    preparing.add_argument("name", help="ade20k, cityscapes, coco_stuff_164k, coco_stuff_10k or pascal_context_59")
    preparing.add_argument("--root", type=Path, help="datasets folder (default $DETECTRON2_DATASETS or ./datasets)")

    validating = commands.add_parser("validate-data", help="check every image and label map of a dataset")
    validating.add_argument("name", nargs="?", help="a registered dataset (both splits) or split, e.g. digits_sem_seg")
    validating.add_argument("--image-root", type=Path, help="folder of images (instead of NAME)")
    validating.add_argument("--gt-root", type=Path, help="folder of label maps, same relative paths and stems")
    validating.add_argument("--num-classes", type=int, help="with --image-root: class ids are 0..N-1")
    validating.add_argument("--ignore-label", type=int, default=255, help="with --image-root: unlabelled value (255)")
    validating.add_argument("--image-ext", help="with --image-root: image extension (default: jpg, or the one "
                            "image extension the folder holds)")
    validating.add_argument("--gt-ext", default="png", help="with --image-root: label map extension (png)")

    checking = commands.add_parser("check", help="compare finished cells with reference numbers; exit 1 on regression")
    checking.add_argument("reference", type=Path, help="reference YAML, e.g. jobs/reference/quickstart.yaml")
    source = checking.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment (a grid's name) whose FINISHED cells to check")
    source.add_argument("--results", type=Path, help="a grid's results.jsonl")
    checking.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    checking.add_argument("--latest", action="store_true", help="where cells of one head differ in more than the "
                          "seed, check only the newest configuration (default: such a select fails, naming them)")

    report = commands.add_parser("report", help="tables, plots and an HTML page from a grid's MLflow runs")
    chosen = report.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--experiment", help="MLflow experiment (a grid's name)")
    chosen.add_argument("--parent", help="a grid's parent run id")
    chosen.add_argument("--scaling", action="store_true",
                        help="no runs: every head's cost on --backbone as the class count grows (ProtoSeg Table 4)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    report.add_argument("--out", type=Path, help="output folder (default reports/<name>, reports/scaling-<backbone>)")
    report.add_argument("--latest", action="store_true", help="one row per head: where its cells differ in more than "
                        "the seed, only the newest configuration (default: a row each, labelled by what differs)")
    report.add_argument("--backbone", default="resnet10t", help="with --scaling: the backbone (default resnet10t)")
    report.add_argument("--classes", type=_batch_sizes, help="with --scaling: class counts (default 150,300,500,847,2000)")
    report.add_argument("--image-size", type=int, default=512, help="with --scaling: input size (default 512)")
    report.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="with --scaling: model.embed_dim=N, model.neck=NAME, train.threads=N")

    ui = commands.add_parser("ui", help="the MLflow UI for the tracking store, on 127.0.0.1")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")

    listing = commands.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=["backbones", "classifiers", "datasets", "necks"])
    listing.add_argument("--pattern", help="shell-style filter, e.g. 'resnet*'")
    listing.add_argument("--details", action="store_true",
                         help="backbones: build each match (pretrained=False) and show its channels and strides")
    return parser


def _run(args: argparse.Namespace) -> int:
    from harness.config import RunConfig, apply_overrides
    from harness.results import to_json
    from harness.run import default_storage, run_cell, state_dict_bytes
    from harness.tracking import log_cell, resolve_tracking_uri

    flags = [f"{key}={getattr(args, flag)}" for flag, key in _RUN_FLAGS.items() if getattr(args, flag) is not None]
    cfg = apply_overrides(RunConfig(), flags + list(args.set))
    cfg.tracking_uri = resolve_tracking_uri(args.tracking_uri)
    if args.json is not None and not args.json.parent.is_dir():
        raise InputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected >= 1")
    result, model = run_cell(cfg, resume=args.resume, log=_stderr, workers=args.workers,
                             storage=args.storage or default_storage(cfg))
    if args.json is not None:
        args.json.write_text(to_json(result))
    if not args.no_tracking:
        run_id = log_cell(result, cfg.tracking_uri, cfg.experiment, weights=state_dict_bytes(model))
        print(f"[segheads] logged MLflow run {run_id} to {cfg.tracking_uri} (experiment {cfg.experiment!r})", file=sys.stderr)
    m = result["metrics"]
    print(f"{'classifier':<12}{'backbone':<24}{'mIoU':>8}{'fwIoU':>8}{'mACC':>8}{'pACC':>8}{'head params':>13}")
    print(f"{cfg.model.classifier:<12}{cfg.model.backbone:<24}{m['mIoU']:>8.2f}{m['fwIoU']:>8.2f}"
          f"{m['mACC']:>8.2f}{m['pACC']:>8.2f}{m['params/head']:>13,}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    import json

    from harness.config import RunConfig, apply_overrides
    from harness.measure import measure_model
    from harness.run import build_segmentor, resolve_device

    flags = [f"{key}={getattr(args, flag)}" for flag, key in _MEASURE_FLAGS.items() if getattr(args, flag) is not None]
    flags += [f"measure.{flag}=true" for flag in ("channels_last", "compile") if getattr(args, flag)]
    if args.json is not None and not args.json.parent.is_dir():
        raise InputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.run:
        cfg, model, threads = _logged_model(args.run, args.tracking_uri, flags + list(args.set))
        num_classes = model.classifier.num_classes
    else:
        cfg = apply_overrides(RunConfig(), flags + list(args.set))
        if args.num_classes < 1:
            raise InputError(f"--num-classes {args.num_classes}: expected >= 1")
        num_classes, threads = args.num_classes, cfg.train.threads
        model = build_segmentor(cfg, num_classes, 255)
    device = resolve_device(cfg.device)
    metrics, record = measure_model(model.to(device), cfg.measure, device, threads)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": {"backbone": cfg.model.backbone, "neck": cfg.model.neck,
                                                   "classifier": cfg.model.classifier, "num_classes": num_classes,
                                                   "embed_dim": cfg.model.embed_dim, "run": args.run},
                                         "metrics": metrics, "measurement": record}, indent=2))
    print(_format_measurement(cfg, num_classes, metrics, record))
    return 0


def _logged_model(run_id: str, tracking_uri: str | None, overrides: list[str]):
    """(config, trained model, threads) of a logged cell: its measure settings and the threads
    its grid measured with (``measurement.json``), then ``overrides``."""
    import json

    from harness.config import apply_overrides
    from harness.predict import load_run
    from harness.tracking import read_artifact, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    logged, model = load_run(run_id, uri)
    try:
        threads = json.loads(read_artifact(run_id, "measurement.json", uri))["machine"]["threads"]
    except (InputError, KeyError):
        threads = logged.train.threads
    cfg = apply_overrides(logged, overrides)
    threads_given = any(o.split("=", 1)[0] == "train.threads" for o in overrides)
    return cfg, model, cfg.train.threads if threads_given else threads


def _predict(args: argparse.Namespace) -> int:
    from harness.data import DatasetCatalog, SemSegMapper
    from harness.predict import list_images, load_run, write_predictions
    from harness.run import dataset_splits, label_space
    from harness.tracking import resolve_tracking_uri

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: expected >= 1")
    cfg, model = load_run(args.run, resolve_tracking_uri(args.tracking_uri))
    classes, ignore = label_space(cfg.data.dataset)
    if args.images is not None:
        import numpy as np
        import torch

        from harness.data.sem_seg import read_image

        paths = list_images(args.images)[: args.limit]
        sources = [(str(p.relative_to(args.images).with_suffix("")).replace("/", "__"),
                    torch.from_numpy(np.asarray(read_image(p)).copy()).permute(2, 0, 1)) for p in paths]
    else:
        split = args.dataset if args.dataset in DatasetCatalog else dataset_splits(args.dataset)["val"]
        mapper = SemSegMapper(len(classes), ignore)
        sources = [(Path(r["file_name"]).stem, mapper(r)["image"]) for r in DatasetCatalog.get(split)[: args.limit]]
    written = write_predictions(model, classes, sources, args.out, cfg.eval)
    print(f"[segheads] {len(sources)} predictions of {cfg.model.classifier}@{cfg.model.backbone} "
          f"(run {args.run}) in {args.out}, legend {written[-1]}", file=sys.stderr)
    return 0


def _format_measurement(cfg, num_classes: int, metrics: dict, record: dict) -> str:
    """The table ``segheads measure`` prints."""
    machine, settings = record["machine"], record["settings"]
    mega = {k.split("/", 1)[1]: v / 1e6 for k, v in metrics.items() if k.startswith("params/")}
    lines = [
        f"{cfg.model.classifier} on {cfg.model.backbone} + {cfg.model.neck} neck, C={num_classes}, "
        f"D={cfg.model.embed_dim}, {settings['image_size']}x{settings['image_size']}, {settings['dtype']}"
        f"{', channels_last' if settings['channels_last'] else ''}{', compiled' if settings['compile'] else ''}",
        f"machine: {machine['device_name']} ({machine['device']}, {machine['threads']} threads), torch {machine['torch']}; "
        f"timer {record['timer']}, memory {record['memory']}",
        f"params (M): total {mega['total']:.3f} = backbone {mega['backbone']:.3f} + neck {mega['neck']:.3f} "
        f"+ head {mega['head']:.3f} (inference {mega['head_inference']:.3f}, training-only "
        f"{mega['head_training_only']:.3f}) + auxiliary head {mega['auxiliary']:.3f}; at inference "
        f"{mega['inference']:.3f} (without the {mega['training_only']:.3f} training-only); non-learnable head state "
        f"{mega['head_nonlearnable']:.3f}",
        "FLOPs per image (GFLOPs / GMACs): " + ", ".join(
            f"{part} {metrics[f'gflops/{part}']:.3f} / {metrics[f'gmacs/{part}']:.3f}"
            for part in ("total", "backbone", "neck", "head", "matmul", "layers_only") if f"gflops/{part}" in metrics),
        f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'std ms':>8} {'images/s':>9} "
        f"{'peak MB':>8} {'GFLOP/s':>8} {'of matmul':>9}",
    ]
    for requested in settings["batch_sizes"]:
        batch = int(metrics.get(f"oom/bs{requested}/measured_batch", requested))
        if batch != requested:
            lines.append(f"{requested:>5} out of memory; measured at batch {batch} instead")
        lat = {q: metrics[f"latency/bs{batch}/{q}_ms"] for q in ("p50", "p90", "p99", "mean", "std")}
        lines.append(f"{batch:>5} {lat['p50']:>9.2f} {lat['p90']:>9.2f} {lat['p99']:>9.2f} {lat['mean']:>9.2f} "
                     f"{lat['std']:>8.2f} {metrics[f'throughput/bs{batch}/images_per_s']:>9.2f} "
                     f"{metrics[f'memory/bs{batch}/peak_mb']:>8.1f} "
                     f"{metrics[f'efficiency/bs{batch}/achieved_gflops_per_s']:>8.1f} "
                     f"{metrics[f'efficiency/bs{batch}/fraction_of_matmul']:>9.1%}")
    lines.append(f"machine matmul: {metrics['efficiency/machine_matmul_gflops_per_s']:.1f} GFLOP/s "
                 f"({settings['dtype']}, {machine['threads']} threads)")
    return "\n".join(lines)


def _grid(args: argparse.Namespace) -> int:
    from harness.config import config_hash
    from harness.grid import comparison_table, describe, expand, load_grid, overhead, run_grid, validate_cells
    from harness.pretrain import describe_weights

    spec = load_grid(args.spec)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise InputError(f"--max-concurrent {args.max_concurrent}: expected >= 1")
    if args.dry_run:
        cells = expand(spec)
        validate_cells(cells, spec.resources.workers)
        r = spec.resources
        print(f"grid {spec.name!r}: {len(cells)} cells; per cell {r.workers} worker(s) x {r.cpus:g} CPU, "
              f"{r.gpus:g} GPU (training), "
              f"{r.measure_cpus:g} CPU, {r.measure_gpus:g} GPU (measurement, holding its whole node); "
              f"{r.retries} retries on lost workers"
              + (f"; memory {r.memory_gb:g} GB per task, capped" if r.memory_gb else ""))
        for cfg in cells:
            print(f"  {config_hash(cfg)}  {describe(cfg)}  iters={cfg.train.iters} threads={cfg.train.threads}\n"
                  f"      eval: {cfg.eval.describe_all()}\n      weights: {describe_weights(cfg.model.backbone_kwargs)}")
        return 0
    if args.validate_data:
        from harness.data.validate import validate_registered

        problems = [p for dataset in spec.datasets for p in validate_registered(dataset, log=_stderr)]
        if problems:
            raise InputError(f"{len(problems)} bad file(s) in the grid's datasets (listed above); "
                             "fix them or drop them from the dataset")
    outcome = run_grid(spec, args.tracking_uri, args.address, args.max_concurrent, args.results,
                       log=_stderr, tracking=not args.no_tracking, storage=args.storage)
    print(comparison_table(outcome.results))
    cost = overhead(outcome)
    if cost:
        print(f"ran {outcome.ran} cells in {outcome.wall_seconds:.0f} s on {outcome.slots} slots: wall time / "
              f"(sum of cell times / slots) = {cost['wall_over_ideal']:.2f}, "
              f"{cost['idle_seconds_per_cell']:.1f} idle slot-seconds per cell")
    status = 0
    if outcome.unlogged:
        print(f"segheads: {outcome.unlogged} result(s) are only in {outcome.results_path}; log them with "
              f"`segheads import-results {outcome.results_path}` once the tracking store is back", file=sys.stderr)
        status = 1
    if outcome.failed:
        print(f"segheads: {len(outcome.failed)} of {len(outcome.results)} cells FAILED", file=sys.stderr)
        status = 1
    return status


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _import_results(args: argparse.Namespace) -> int:
    from harness.grid.store import GridStore, read_results

    if not args.results.is_file():
        raise InputError(f"{args.results}: no such file; expected a grid's results.jsonl")
    lines = read_results(args.results)
    names = sorted({r.get("config", {}).get("experiment", "") for r in lines.values()})
    if args.experiment is None and len(names) != 1:
        raise InputError(f"{args.results}: lines name experiments {names}; pass --experiment")
    name = args.experiment or names[0]
    store = GridStore(name, args.tracking_uri, args.results, log=_stderr)
    lease = store.lease()
    lease.acquire()  # like a driver: the repair marks RUNNING cells KILLED, so no driver may be running them
    try:
        store.sync()
    finally:
        lease.release()
    if store.offline:
        raise InputError(f"tracking store {store.tracking_uri} failed while importing ({store.offline})")
    print(f"imported {store.imported} of {len(lines)} cell result(s) into experiment {name!r} at {store.tracking_uri}")
    return 0


def _prepare_data(args: argparse.Namespace) -> int:
    from harness.data.prepare import prepare

    prepare(args.name, args.root, log=_stderr)
    return 0


def _validate_data(args: argparse.Namespace) -> int:
    from harness.data.validate import validate_folders, validate_registered

    if (args.name is None) == (args.image_root is None):
        raise InputError("validate-data: give a dataset NAME or --image-root/--gt-root/--num-classes, not both")
    if args.name is not None:
        problems = validate_registered(args.name, log=_stderr)
    else:
        if args.gt_root is None or args.num_classes is None or args.num_classes < 1:
            raise InputError("validate-data --image-root: also needs --gt-root and --num-classes N (N >= 1)")
        problems = validate_folders(args.image_root, args.gt_root, args.num_classes, args.ignore_label,
                                    f".{args.image_ext.lstrip('.')}" if args.image_ext else None,
                                    f".{args.gt_ext.lstrip('.')}", log=_stderr)
    if problems:
        print(f"segheads: error: {len(problems)} bad file(s), listed above", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> int:
    from harness.check import cells_from_mlflow, cells_from_results, check, format_rows
    from harness.reference import load_reference

    reference = load_reference(args.reference)
    if args.results is not None and not args.results.is_file():
        raise InputError(f"--results {args.results}: no such file")
    cells = cells_from_results(args.results) if args.results else cells_from_mlflow(args.experiment, args.tracking_uri)
    rows = check(reference, cells, latest=args.latest)
    print(format_rows(reference, rows))
    return 1 if any(row.failure for row in rows) else 0


def _report(args: argparse.Namespace) -> int:
    from harness.report import SCALING_CLASSES, cells_from_mlflow, vocabulary_scaling, write_report
    from harness.tracking import resolve_tracking_uri

    if args.scaling:
        from harness.config import RunConfig, apply_overrides

        cfg = apply_overrides(RunConfig(), list(args.set))
        classes = args.classes or SCALING_CLASSES
        if min(classes) < 1 or args.image_size < 1:
            raise InputError(f"--classes {classes} / --image-size {args.image_size}: expected positive values")
        written = vocabulary_scaling(args.backbone, args.out or Path("reports") / f"scaling-{args.backbone}", classes,
                                     image_size=args.image_size, embed_dim=cfg.model.embed_dim, neck=cfg.model.neck,
                                     threads=cfg.train.threads)
        print("\n".join(str(path) for path in written))
        return 0
    name, cells = cells_from_mlflow(args.experiment, args.parent, args.tracking_uri)
    written = write_report(name, cells, args.out or Path("reports") / name, resolve_tracking_uri(args.tracking_uri),
                           latest=args.latest)
    print("\n".join(str(path) for path in written))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import contextlib
    import signal
    import subprocess

    from harness.tracking import resolve_tracking_uri

    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", resolve_tracking_uri(args.tracking_uri),
               "--host", args.host, "--port", str(args.port)]
    print(f"[segheads] MLflow UI on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    # Its own process group, stopped as a whole: `mlflow ui` runs the web server as its own child.
    server = subprocess.Popen(command, start_new_session=True)

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` stops the server too, as Ctrl-C does
    try:
        return server.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the group outlived its leader
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        return 0


def _list(args: argparse.Namespace) -> int:
    import fnmatch

    if args.what == "backbones":
        from backbones import list_backbones

        names = list_backbones(args.pattern)
        if args.details:
            if args.pattern is None:
                raise InputError("list backbones --details builds every match; narrow it with --pattern, e.g. 'mit_*'")
            print("\n".join(_backbone_details(name) for name in names))
            return 0
    else:
        if args.what == "classifiers":
            from classifiers import list_classifiers as lister
        elif args.what == "necks":
            from backbones import list_necks as lister
        else:
            from harness.data import DatasetCatalog

            lister = DatasetCatalog.list
        names = lister()
        names = fnmatch.filter(names, args.pattern) if args.pattern else names
    print("\n".join(names))
    return 0


def _backbone_details(name: str) -> str:
    from backbones import build_backbone

    backbone = build_backbone(name)
    millions = sum(p.numel() for p in backbone.parameters()) / 1e6
    return f"{name:<24} channels {backbone.channels}  strides {backbone.strides}  {millions:.1f} M params"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per result, not bars
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is segheads' own output
    try:
        commands = {"run": _run, "measure": _measure, "predict": _predict, "grid": _grid, "check": _check, "report": _report,
                    "ui": _ui, "list": _list, "import-results": _import_results, "validate-data": _validate_data,
                    "prepare-data": _prepare_data}
        return commands[args.command](args)
    except InputError as exc:
        print(f"segheads: error: {exc}", file=sys.stderr)
        return 2
