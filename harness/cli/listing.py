"""``segheads list``: registered backbones, classifiers, datasets and necks, each with where it
comes from (segheads, timm, detectron2, or the plugin that registered it: ``harness.plugins``)."""

from __future__ import annotations

import argparse
import fnmatch

from backbones import build_backbone, list_backbones, list_necks
from backbones.build import BACKBONES
from classifiers import list_classifiers
from harness.data import DatasetCatalog
from harness.errors import InputError
from harness.plugins import source

_LISTERS = {"classifiers": list_classifiers, "necks": list_necks, "datasets": DatasetCatalog.list}
_KINDS = {"backbones": "backbone", "classifiers": "classifier", "datasets": "dataset", "necks": "neck"}


def list_names(args: argparse.Namespace) -> int:
    if args.what == "backbones":
        names = list_backbones(args.pattern)
        if args.details:
            if args.pattern is None:
                raise InputError("list backbones --details builds every match; narrow it with --pattern, e.g. 'mit_*'")
            print("\n".join(_backbone_details(name) for name in names))
            return 0
    else:
        names = _LISTERS[args.what]()
        names = fnmatch.filter(names, args.pattern) if args.pattern else names
    width = max(map(len, names), default=0)
    print("\n".join(f"{name:<{width}}  {_source(args.what, name)}" for name in names))
    return 0


def _source(what: str, name: str) -> str:
    if what == "backbones" and name not in BACKBONES:
        return "timm"
    return source(_KINDS[what], name)


def _backbone_details(name: str) -> str:
    backbone = build_backbone(name)
    millions = sum(p.numel() for p in backbone.parameters()) / 1e6
    return f"{name:<24} channels {backbone.channels}  strides {backbone.strides}  {millions:.1f} M params"
