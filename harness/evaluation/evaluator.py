"""Scoring predictions: ``SemSegEvaluator`` (detectron2's keys and formulas, boundary IoU included,
plus the calibration error) and ``evaluate``, which runs a model over a loader under a test protocol
and feeds the evaluator (detectron2's ``inference_on_dataset``).

Matches ``detectron2.evaluation.SemSegEvaluator``: a (C+1) x (C+1) confusion
matrix indexed [pred, gt] with ignore pixels in the extra column; IoU and
accuracy are averaged over classes present in the ground truth; all values in
percent; per-class entries of absent classes are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness import metric_keys as keys
from harness.config import EvalConfig
from harness.evaluation.boundary import MAX_CLASSES, mask_to_boundary
from harness.evaluation.calibration import CalibrationBins
from harness.evaluation.protocols import predict_labels_and_confidence

SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")  # the evaluator's scores over all classes


def _as_numpy(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False)


class SemSegEvaluator:
    """``reset() / process(pred, gt, confidence=None, file_name=None) / evaluate() -> dict`` over
    integer label maps (H, W). Boundary IoU is counted when there are fewer than ``MAX_CLASSES``
    classes (detectron2's limit); the calibration error when ``process`` is given each pixel's
    top-class probability. ``keep`` maps image file names to keys: those images' predictions are
    kept in ``kept`` under their keys (the report's samples, ``harness.evaluation.samples``)."""

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: list[str] | None = None,
                 keep: dict[str, int] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries; expected num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.keep = dict(keep or {})
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        self.boundary_confusion = np.zeros_like(self.confusion)
        self.calibration = CalibrationBins()
        self._per_image: list[list[list[int]]] = []
        self.kept: dict[int, np.ndarray] = {}

    def process(self, pred, gt, confidence=None, file_name: str | None = None) -> None:
        """Count one image: ``pred`` and ``gt`` label maps (H, W), ``confidence`` (optional, H x W
        floats) the probability of each pixel's predicted class, ``file_name`` the image's (its
        prediction is kept when ``keep`` names it)."""
        pred, gt = _as_numpy(pred), _as_numpy(gt)
        if file_name in self.keep:
            self.kept[self.keep[file_name]] = pred.copy()
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
        if self.num_classes < MAX_CLASSES:  # detectron2's boundary counts: ignore pixels as label C
            edges_pred = mask_to_boundary(pred.astype(np.uint8)).astype(np.int64)
            edges_gt = mask_to_boundary(gt.astype(np.uint8)).astype(np.int64)
            self.boundary_confusion += np.bincount(size * edges_pred.reshape(-1) + edges_gt.reshape(-1),
                                                   minlength=size * size).reshape(size, size)
        if confidence is not None:
            counted = ~ignored
            self.calibration.add(np.asarray(confidence, dtype=np.float64)[counted], (pred == gt)[counted])
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
            results[keys.class_iou(name)] = 100 * value
        for name, value in zip(self.class_names, acc):
            results[keys.class_accuracy(name)] = 100 * value
        if self.num_classes < MAX_CLASSES:
            results.update(self._boundary(iou))
        results.update(self.calibration.metrics())
        return {key: float(value) for key, value in results.items()}

    def _boundary(self, iou: np.ndarray) -> dict[str, float]:
        """detectron2's ``BoundaryIoU-<class>`` and ``min(IoU, B-Iou)-<class>`` (its names, NaN rules
        and Python ``min``), and their mean over the classes with a boundary, ``mBoundaryIoU``."""
        matrix = self.boundary_confusion[:-1, :-1].astype(np.float64)
        tp = np.diag(matrix)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
        valid = union > 0
        boundary = np.full(self.num_classes, np.nan)
        boundary[valid] = tp[valid] / union[valid]
        out = {"mBoundaryIoU": 100 * boundary[valid].mean() if valid.any() else float("nan")}
        for index, name in enumerate(self.class_names):
            out[f"BoundaryIoU-{name}"] = 100 * boundary[index]
            out[f"min(IoU, B-Iou)-{name}"] = 100 * min(iou[index], boundary[index])
        return out


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
            preds, confidences = predict_labels_and_confidence(model, images, protocol)
            for pred, confidence, item in zip(preds.cpu(), confidences.cpu(), items):
                evaluator.process(pred, item["sem_seg"], confidence.numpy(), item.get("file_name"))
    model.train(was_training)
    return evaluator.evaluate()
