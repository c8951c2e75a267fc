"""Interchangeable pixel classifier heads, built by name from one registry."""

from classifiers.base import ClassifierOutput, PixelClassifier
from classifiers.registry import (
                                  build_classifier,
                                  classifier_accepts,
                                  list_classifiers,
                                  register_classifier,
                                  resolve_classifier_kwargs,
)

# Importing a head module registers it.
from classifiers import ece, protoseg, query, softmax, ssa  # noqa: E402,F401  isort: skip

__all__ = ["ClassifierOutput", "PixelClassifier", "build_classifier", "classifier_accepts", "list_classifiers",
           "register_classifier", "resolve_classifier_kwargs"]
