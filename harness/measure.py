"""Measurement of a ``Segmentor``: parameter accounting (DESIGN.md, "Measurement")."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


def _numel(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a ``Segmentor``: total, backbone, neck, head, the head split into
    inference and training-only parts, and the head's non-learnable state (elements)."""
    head = model.classifier
    training_only = {id(p): p for m in head.training_only_modules().values() for p in m.parameters()}
    head_total = _numel(head.parameters())
    training_only_total = _numel(training_only.values())
    total = _numel(model.parameters())
    return {
        "params/total": total,
        "params/inference": total - training_only_total,
        "params/backbone": _numel(model.backbone.parameters()),
        "params/neck": _numel(model.neck.parameters()),
        "params/head": head_total,
        "params/head_inference": head_total - training_only_total,
        "params/head_training_only": training_only_total,
        "params/head_nonlearnable": _numel(head.nonlearnable_state().values()),
    }
