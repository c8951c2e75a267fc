"""``segheads report``, ``check`` and ``ui``: finished cells read back, reported, checked, browsed."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.check import check as check_cells
from harness.check import format_rows, load_reference
from harness.config import RunConfig, apply_overrides
from harness.errors import InputError
from harness.measure import SCALING_CLASSES, vocabulary_scaling
from harness.report import read_cells, write_report
from harness.tracking import resolve_tracking_uri, serve_ui


def check(args: argparse.Namespace) -> int:
    reference = load_reference(args.reference)
    if args.results is not None and not args.results.is_file():
        raise InputError(f"--results {args.results}: no such file")
    _, cells = read_cells(args.results, args.experiment, tracking_uri=args.tracking_uri)
    rows = check_cells(reference, cells, latest=args.latest)
    print(format_rows(reference, rows))
    return 1 if any(row.failure and not (row.missing and args.allow_missing) for row in rows) else 0


def report(args: argparse.Namespace) -> int:
    if args.scaling:
        cfg = apply_overrides(RunConfig(), list(args.set))
        classes = args.classes or SCALING_CLASSES
        if min(classes) < 1 or args.image_size < 1:
            raise InputError(f"--classes {classes} / --image-size {args.image_size}: expected positive values")
        written = vocabulary_scaling(args.backbone, args.out or Path("reports") / f"scaling-{args.backbone}", classes,
                                     image_size=args.image_size, embed_dim=cfg.model.embed_dim, neck=cfg.model.neck,
                                     threads=cfg.train.threads)
        print("\n".join(str(path) for path in written))
        return 0
    name, cells = read_cells(experiment=args.experiment, parent_run_id=args.parent, tracking_uri=args.tracking_uri,
                             per_image=True)
    if not cells:
        raise InputError(f"{'run ' + args.parent if args.parent else 'experiment ' + repr(args.experiment)}: "
                         "no FINISHED cells to report")
    written = write_report(name, cells, args.out or Path("reports") / name, resolve_tracking_uri(args.tracking_uri),
                           latest=args.latest)
    print("\n".join(str(path) for path in written))
    return 0


def ui(args: argparse.Namespace) -> int:
    return serve_ui(args.tracking_uri, args.host, args.port)
