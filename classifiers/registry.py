"""The classifier registry.

Contract: ``@register_classifier(name)`` decorates a ``PixelClassifier`` subclass whose
constructor is ``cls(num_classes, in_channels, ignore_index=255, **hparams)``; every
hyper-parameter is a keyword with a default, so ``build_classifier(name,
num_classes=..., in_channels=...)`` gives the paper's setting.
"""

from __future__ import annotations

import inspect

from classifiers.base import PixelClassifier
from harness.errors import InputError, unknown_name_error

_CLASSIFIERS: dict[str, type[PixelClassifier]] = {}


def register_classifier(name: str):
    def _register(cls: type[PixelClassifier]) -> type[PixelClassifier]:
        if name in _CLASSIFIERS:
            raise ValueError(f"classifier {name!r} is already registered")
        if not issubclass(cls, PixelClassifier):
            raise TypeError(f"classifier {name!r}: {cls.__name__} is not a PixelClassifier")
        _CLASSIFIERS[name] = cls
        return cls

    return _register


def list_classifiers() -> list[str]:
    return sorted(_CLASSIFIERS)


def build_classifier(
    name: str, *, num_classes: int, in_channels: int, ignore_index: int = 255, **hparams
) -> PixelClassifier:
    if name not in _CLASSIFIERS:
        raise unknown_name_error("classifier", name, list(_CLASSIFIERS))
    cls = _CLASSIFIERS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "in_channels", "ignore_index")]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise InputError(f"classifier {name!r}: unknown hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(num_classes, in_channels, ignore_index=ignore_index, **hparams)
