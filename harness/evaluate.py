"""Inference over a test loader into a ``SemSegEvaluator``."""

from __future__ import annotations

import torch
from torch import nn

from harness.metrics import SemSegEvaluator


@torch.no_grad()
def evaluate(model: nn.Module, loader, evaluator: SemSegEvaluator, device: torch.device) -> dict[str, float]:
    """Predict every image at its own size (same-size images of a batch run together)."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    for batch in loader:
        by_size: dict[tuple, list[dict]] = {}
        for item in batch:
            by_size.setdefault(tuple(item["image"].shape), []).append(item)
        for items in by_size.values():
            images = torch.stack([item["image"] for item in items]).to(device)
            preds = model.predict(images).argmax(dim=1).cpu()
            for pred, item in zip(preds, items):
                evaluator.process(pred, item["sem_seg"])
    model.train(was_training)
    return evaluator.evaluate()
