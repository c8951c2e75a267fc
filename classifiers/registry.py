"""The classifier registry.

Contract: ``@register_classifier(name)`` decorates a ``PixelClassifier`` subclass whose
constructor is ``cls(num_classes, in_channels, ignore_index=255, **hparams)``; every
hyper-parameter is a keyword with a default, so ``build_classifier(name,
num_classes=..., in_channels=...)`` gives the paper's setting.
"""

from __future__ import annotations

import inspect

from classifiers.base import PixelClassifier, resolve_preset
from harness.errors import InputError
from harness.registry import Registry


def _check_head(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, PixelClassifier)):
        raise TypeError(f"classifier {name!r}: {cls!r} is not a PixelClassifier subclass")


CLASSIFIERS: Registry[type[PixelClassifier]] = Registry("classifier", _check_head)
register_classifier = CLASSIFIERS.register


def list_classifiers() -> list[str]:
    return CLASSIFIERS.names()


def _accepted(cls: type[PixelClassifier]) -> list[str]:
    fixed = ("self", "num_classes", "in_channels", "ignore_index")
    return [p for p in inspect.signature(cls.__init__).parameters if p not in fixed]


def classifier_accepts(name: str, hparam: str) -> bool:
    """Whether head ``name`` takes the keyword ``hparam``."""
    return hparam in _accepted(CLASSIFIERS.get(name))


def _checked(name: str, hparams: dict) -> type[PixelClassifier]:
    """The class registered as ``name``; ``InputError`` naming any hyper-parameter it does not accept."""
    cls = CLASSIFIERS.get(name)
    accepted = _accepted(cls)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise InputError(f"classifier {name!r}: unknown hyper-parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    return cls


def build_classifier(
    name: str, *, num_classes: int, in_channels: int, ignore_index: int = 255, **hparams
) -> PixelClassifier:
    return _checked(name, hparams)(num_classes, in_channels, ignore_index=ignore_index, **hparams)


def resolve_classifier_kwargs(name: str, hparams: dict) -> dict:
    """The settings head ``name`` runs with when built from ``hparams``: a paper head's preset
    (``code`` unless ``preset`` says otherwise) overridden by the options given, each named
    (``{"preset": "code", "tau": 1.0, ...}``); a head without presets keeps ``hparams`` as given.
    Building from the result gives the same head, so resolving is idempotent."""
    cls = _checked(name, hparams)
    return resolve_preset(name, cls.PRESETS, hparams) if cls.PRESETS else dict(hparams)
