"""Evaluation: test-time protocols, scores with detectron2's keys, and predictions as pictures.

- ``protocols``: ``predict_logits(model, image, eval_cfg)``, the class scores of an image at its
  original size under a test protocol (resize, sliding windows, scales x flips: MMSegmentation's
  ``slide_inference`` and ``SegTTAModel``).
- ``evaluator``: ``SemSegEvaluator`` (reset / process / evaluate; ``mIoU``, ``fwIoU``, ``mACC``,
  ``pACC``, per class, per-image counts) and ``evaluate`` (a model over a loader under a protocol).
- ``predict``: label maps, colours, legends and prediction images (``write_predictions``).
"""

from harness.evaluation.evaluator import SUMMARY_METRICS, SemSegEvaluator, evaluate
from harness.evaluation.predict import (
    class_colors,
    colorize,
    dataset_sources,
    folder_sources,
    image_iou,
    legend_image,
    list_images,
    predict_labels,
    write_predictions,
)
from harness.evaluation.protocols import predict_logits

__all__ = [
    "SUMMARY_METRICS",
    "SemSegEvaluator",
    "class_colors",
    "colorize",
    "dataset_sources",
    "evaluate",
    "folder_sources",
    "image_iou",
    "legend_image",
    "list_images",
    "predict_labels",
    "predict_logits",
    "write_predictions",
]
