"""Parameter counts of a model: total, per part, inference vs training-only, non-learnable state."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from classifiers.base import PixelClassifier
from harness import metric_keys as keys

PART_NAMES = {"classifier": "head"}  # a Segmentor's children, named as in the parameter counts


def _numel(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a ``Segmentor``: total, backbone, neck, head, the head split into
    inference and training-only parts, the auxiliary head (training-only), all training-only
    parts together, what inference runs (``params/inference`` = total - training-only) and
    the head's non-learnable state (elements). Any other module: ``params/total`` only."""
    if not isinstance(getattr(model, "classifier", None), PixelClassifier):
        return {keys.params("total"): _numel(model.parameters())}
    head = model.classifier
    training_only = {id(p): p for m in head.training_only_modules().values() for p in m.parameters()}
    head_total = _numel(head.parameters())
    training_only_total = _numel(training_only.values())
    auxiliary = _numel(model.auxiliary.parameters()) if getattr(model, "auxiliary", None) is not None else 0
    total = _numel(model.parameters())
    counts = {
        "total": total,
        "inference": total - training_only_total - auxiliary,
        "training_only": training_only_total + auxiliary,
        "auxiliary": auxiliary,
        "backbone": _numel(model.backbone.parameters()),
        "neck": _numel(model.neck.parameters()),
        "head": head_total,
        "head_inference": head_total - training_only_total,
        "head_training_only": training_only_total,
        "head_nonlearnable": _numel(head.nonlearnable_state().values()),
    }
    return {keys.params(part): count for part, count in counts.items()}
