"""``segheads check-head``: the classifier contract (``harness.testing.check_classifier``) on a
head named by ``MODULE:NAME`` or by its registered name."""

from __future__ import annotations

import argparse
import functools
import importlib

from classifiers import build_classifier, list_classifiers
from harness.config import parse_override
from harness.errors import InputError
from harness.plugins import load_plugins
from harness.testing import check_classifier


def check_head(args: argparse.Namespace) -> int:
    for name, value in (("--classes", args.classes), ("--channels", args.channels)):
        if value < 1:
            raise InputError(f"{name} {value}: expected >= 1")
    hparams = dict(parse_override(item, example="preset=paper") for item in args.set)
    factory = functools.partial(_factory(args.head), **hparams)
    report = check_classifier(factory, num_classes=args.classes, in_channels=args.channels, name=args.head)
    print(report)
    return 0 if report.ok else 1


def _factory(target: str):
    """What ``target`` names: ``MODULE:NAME``, an attribute of an importable module (imported as a
    plugin, so a failing import is one line), or a registered classifier's name."""
    module, colon, name = target.partition(":")
    if not colon:
        if target not in list_classifiers():
            raise InputError(f"check-head {target!r}: expected MODULE:NAME or a registered classifier "
                             f"({', '.join(list_classifiers())})")
        return functools.partial(build_classifier, target)
    load_plugins([module], origin="check-head")
    imported = importlib.import_module(module)
    if hasattr(imported, name):
        factory = getattr(imported, name)
        if not callable(factory):
            raise InputError(f"check-head {target}: {name} is a {type(factory).__name__}; expected a PixelClassifier "
                             "subclass or a function returning one")
        return factory
    if name in list_classifiers():
        return functools.partial(build_classifier, name)
    raise InputError(f"check-head {target}: module {module} has no attribute {name!r} and no classifier of that name "
                     "is registered")

