"""``segheads grid`` and ``import-results``."""

from __future__ import annotations

import argparse
import sys

from harness.data.validate import validate_registered
from harness.errors import InputError
from harness.grid import GridStore, comparison_table, dry_run, load_grid, overhead, run_grid
from harness.results import read_results


def grid(args: argparse.Namespace) -> int:
    spec = load_grid(args.spec, args.set)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise InputError(f"--max-concurrent {args.max_concurrent}: expected >= 1")
    if args.dry_run:
        if args.gpu_tflops <= 0:
            raise InputError(f"--gpu-tflops {args.gpu_tflops:g}: expected a positive throughput")
        print(dry_run(spec, args.tracking_uri, args.results, args.gpu_tflops))
        return 0
    if args.validate_data:
        problems = [p for dataset in spec.datasets for p in validate_registered(dataset)]
        if problems:
            raise InputError(f"{len(problems)} bad file(s) in the grid's datasets (listed above); "
                             "fix them or drop them from the dataset")
    outcome = run_grid(spec, args.tracking_uri, args.address, args.max_concurrent, args.results,
                       tracking=not args.no_tracking, storage=args.storage)
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


def import_results(args: argparse.Namespace) -> int:
    if not args.results.is_file():
        raise InputError(f"{args.results}: no such file; expected a grid's results.jsonl")
    lines = read_results(args.results)
    names = sorted({r.config.get("experiment", "") for r in lines.values()})
    if args.experiment is None and len(names) != 1:
        raise InputError(f"{args.results}: lines name experiments {names}; pass --experiment")
    name = args.experiment or names[0]
    store = GridStore(name, args.tracking_uri, args.results)
    lease = store.lease()
    lease.acquire()  # like a driver: the repair marks RUNNING cells KILLED, so no driver may be running them
    try:
        store.sync()
    finally:
        lease.release()
    if not store.online:
        raise InputError(f"tracking store {store.tracking_uri} failed while importing ({store.offline_reason})")
    print(f"imported {store.imported} of {len(lines)} cell result(s) into experiment {name!r} at {store.tracking_uri}")
    return 0
