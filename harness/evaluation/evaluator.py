"""Scoring predictions: ``SemSegEvaluator`` (detectron2's keys and formulas) and ``evaluate``, which
runs a model over a loader under a test protocol and feeds the evaluator (detectron2's
``inference_on_dataset``).

Matches ``detectron2.evaluation.SemSegEvaluator``: a (C+1) x (C+1) confusion
matrix indexed [pred, gt] with ignore pixels in the extra column; IoU and
accuracy are averaged over classes present in the ground truth; all values in
percent; per-class entries of absent classes are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.config import EvalConfig
from harness.evaluation.protocols import predict_logits

SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")  # the evaluator's scores over all classes


def _as_numpy(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False)


class SemSegEvaluator:
    """``reset() / process(pred, gt) / evaluate() -> dict`` over integer label maps (H, W)."""

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: list[str] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries; expected num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        self._per_image: list[list[list[int]]] = []

    def process(self, pred, gt) -> None:
        pred, gt = _as_numpy(pred), _as_numpy(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction values must lie in [0, {self.num_classes}); got [{pred.min()}, {pred.max()}]")
        ignored = gt == self.ignore_label
        if ((gt < 0) | (gt >= self.num_classes))[~ignored].any():
            raise ValueError(f"ground-truth values must lie in [0, {self.num_classes}) or be {self.ignore_label}")
        gt = np.where(ignored, self.num_classes, gt)
        size = self.num_classes + 1
        image = np.bincount(size * pred.reshape(-1) + gt.reshape(-1), minlength=size * size).reshape(size, size)
        self.confusion += image
        matrix = image[:-1, :-1]
        tp, gt_pixels = np.diag(matrix), matrix.sum(axis=0)
        union = gt_pixels + matrix.sum(axis=1) - tp
        self._per_image.append([[int(c), int(tp[c]), int(union[c]), int(gt_pixels[c])] for c in np.flatnonzero(union)])

    def per_image_counts(self) -> list[list[list[int]]]:
        """For each processed image, in order: ``[class, intersection, union, gt pixels]`` for
        every class with a non-zero union (ignore pixels excluded), the input of a paired
        bootstrap over images (``harness.report.bootstrap_delta``)."""
        return self._per_image

    def evaluate(self) -> dict[str, float]:
        matrix = self.confusion[:-1, :-1].astype(np.float64)
        tp = np.diag(matrix)
        pos_gt, pos_pred = matrix.sum(axis=0), matrix.sum(axis=1)
        present = pos_gt > 0
        union = pos_gt + pos_pred - tp
        valid_iou = present & (union > 0)
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc[present] = tp[present] / pos_gt[present]
        iou[valid_iou] = tp[valid_iou] / union[valid_iou]
        total = pos_gt.sum()
        weights = pos_gt / total if total else pos_gt
        results = {
            "mIoU": 100 * iou[valid_iou].mean() if valid_iou.any() else float("nan"),
            "fwIoU": 100 * (iou[valid_iou] * weights[valid_iou]).sum() if valid_iou.any() else float("nan"),
            "mACC": 100 * acc[present].mean() if present.any() else float("nan"),
            "pACC": 100 * tp.sum() / total if total else float("nan"),
        }
        for name, value in zip(self.class_names, iou):
            results[f"IoU-{name}"] = 100 * value
        for name, value in zip(self.class_names, acc):
            results[f"ACC-{name}"] = 100 * value
        return {key: float(value) for key, value in results.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loader, evaluator: SemSegEvaluator, device: torch.device,
             protocol: EvalConfig | None = None) -> dict[str, float]:
    """Predict every image under ``protocol`` (default: whole, native size) and score it against
    its label at the original size; same-size images of a batch run together."""
    protocol = protocol or EvalConfig()
    was_training = model.training
    model.eval()
    evaluator.reset()
    for batch in loader:
        by_size: dict[tuple, list[dict]] = {}
        for item in batch:
            by_size.setdefault(tuple(item["image"].shape), []).append(item)
        for items in by_size.values():
            images = torch.stack([item["image"] for item in items]).to(device)
            preds = predict_logits(model, images, protocol).argmax(dim=1).cpu()
            for pred, item in zip(preds, items):
                evaluator.process(pred, item["sem_seg"])
    model.train(was_training)
    return evaluator.evaluate()
