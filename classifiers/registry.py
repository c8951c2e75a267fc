"""The classifier registry.

Contract: ``@register_classifier(name)`` decorates a ``PixelClassifier`` subclass whose
constructor is ``cls(num_classes, in_channels, ignore_index=255, **hparams)``; every
hyper-parameter is a keyword with a default, so ``build_classifier(name,
num_classes=..., in_channels=...)`` gives the paper's setting.
"""

from __future__ import annotations

import inspect

from classifiers.base import PixelClassifier
from harness.errors import InputError
from harness.registry import Registry

def _check_head(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, PixelClassifier)):
        raise TypeError(f"classifier {name!r}: {cls!r} is not a PixelClassifier subclass")


_CLASSIFIERS: Registry[type[PixelClassifier]] = Registry("classifier", _check_head)
register_classifier = _CLASSIFIERS.register


def list_classifiers() -> list[str]:
    return _CLASSIFIERS.names()


def build_classifier(
    name: str, *, num_classes: int, in_channels: int, ignore_index: int = 255, **hparams
) -> PixelClassifier:
    cls = _CLASSIFIERS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "in_channels", "ignore_index")]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise InputError(f"classifier {name!r}: unknown hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(num_classes, in_channels, ignore_index=ignore_index, **hparams)
