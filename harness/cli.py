"""The ``segheads`` command line (also ``python -m harness``).

Exit status: 0 success, 1 runtime failure, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import InputError

_RUN_FLAGS = {  # CLI flag -> config key
    "backbone": "model.backbone", "classifier": "model.classifier", "neck": "model.neck",
    "dataset": "data.dataset", "iters": "train.iters", "batch_size": "data.batch_size",
    "image_size": "data.image_size", "seed": "train.seed", "device": "device",
    "output_dir": "output_dir", "experiment": "experiment",
}


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
    run.add_argument("--output-dir", help="where checkpoints go (default outputs/)")
    run.add_argument("--experiment", help="MLflow experiment name (default segheads)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--json", type=Path, help="also write the cell result, all metrics included, to this file")
    run.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.01")
    run.add_argument("--resume", action="store_true", help="continue from the cell's checkpoint if there is one")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")

    listing = commands.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=["backbones", "classifiers", "datasets", "necks"])
    listing.add_argument("--pattern", help="shell-style filter, e.g. 'resnet*'")
    return parser


def _run(args: argparse.Namespace) -> int:
    from harness.config import RunConfig, apply_overrides
    from harness.results import to_json
    from harness.run import run_cell
    from harness.tracking import log_cell, resolve_tracking_uri

    flags = [f"{key}={getattr(args, flag)}" for flag, key in _RUN_FLAGS.items() if getattr(args, flag) is not None]
    cfg = apply_overrides(RunConfig(), flags + list(args.set))
    cfg.tracking_uri = resolve_tracking_uri(args.tracking_uri)
    if args.json is not None and not args.json.parent.is_dir():
        raise InputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    result = run_cell(cfg, resume=args.resume, log=lambda msg: print(msg, file=sys.stderr))
    if args.json is not None:
        args.json.write_text(to_json(result))
    if not args.no_tracking:
        run_id = log_cell(result, cfg.tracking_uri, cfg.experiment)
        print(f"[segheads] logged MLflow run {run_id} to {cfg.tracking_uri} (experiment {cfg.experiment!r})", file=sys.stderr)
    m = result["metrics"]
    print(f"{'classifier':<12}{'backbone':<24}{'mIoU':>8}{'fwIoU':>8}{'mACC':>8}{'pACC':>8}{'head params':>13}")
    print(f"{cfg.model.classifier:<12}{cfg.model.backbone:<24}{m['mIoU']:>8.2f}{m['fwIoU']:>8.2f}"
          f"{m['mACC']:>8.2f}{m['pACC']:>8.2f}{m['params/head']:>13,}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import fnmatch

    if args.what == "backbones":
        from backbones import list_backbones

        names = list_backbones(args.pattern)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "list": _list}[args.command](args)
    except InputError as exc:
        print(f"segheads: error: {exc}", file=sys.stderr)
        return 2
