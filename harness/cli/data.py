"""``segheads prepare-data`` and ``validate-data``."""

from __future__ import annotations

import argparse
import sys

from harness.data.prepare import prepare
from harness.data.validate import validate_folders, validate_registered
from harness.errors import InputError


def prepare_data(args: argparse.Namespace) -> int:
    prepare(args.name, args.root)
    return 0


def validate_data(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.image_root is None):
        raise InputError("validate-data: give a dataset NAME or --image-root/--gt-root/--num-classes, not both")
    if args.name is not None:
        problems = validate_registered(args.name)
    else:
        if args.gt_root is None or args.num_classes is None or args.num_classes < 1:
            raise InputError("validate-data --image-root: also needs --gt-root and --num-classes N (N >= 1)")
        problems = validate_folders(args.image_root, args.gt_root, args.num_classes, args.ignore_label,
                                    f".{args.image_ext.lstrip('.')}" if args.image_ext else None,
                                    f".{args.gt_ext.lstrip('.')}")
    if problems:
        print(f"segheads: error: {len(problems)} bad file(s), listed above", file=sys.stderr)
        return 2
    return 0
