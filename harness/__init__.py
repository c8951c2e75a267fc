"""segheads harness: data, model assembly, training, evaluation, measurement, tracking and CLI.

Kept import-light on purpose: ``backbones`` and ``classifiers`` import
``harness.errors`` and must not pull in torch-heavy or MLflow modules through it.
"""

__version__ = "0.1.0"
