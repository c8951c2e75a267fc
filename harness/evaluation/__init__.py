"""Evaluation: test-time protocols, scores with detectron2's keys, and predictions as pictures.

- ``protocols``: ``predict_logits(model, image, eval_cfg)``, the class scores of an image at its
  original size under a test protocol (resize, sliding windows, scales x flips: MMSegmentation's
  ``slide_inference`` and ``SegTTAModel``); ``predict_labels_and_confidence``.
- ``evaluator``: ``SemSegEvaluator`` (reset / process / evaluate; ``mIoU``, ``fwIoU``, ``mACC``,
  ``pACC``, per class, detectron2's boundary IoU, ``ECE``, per-image counts) and ``evaluate`` (a
  model over a loader under a protocol).
- ``boundary``: ``mask_to_boundary``, detectron2's boundary band (OpenCV).
- ``calibration``: ``CalibrationBins``, the expected calibration error and reliability bins.
- ``diagnostics``: ``diagnose`` (a head's own ``PixelClassifier.diagnostics``, averaged over
  validation images), ``split_diagnostics`` (scalars as ``diag/<name>`` metrics, the rest as lists).
- ``predict``: label maps, colours, legends and prediction images (``write_predictions``).
- ``samples``: the report's seeded draw of validation images (``sample_indices``) and label maps as
  a cell keeps them (``encode_label_map``, ``decode_label_map``).
"""

from harness.evaluation.boundary import mask_to_boundary
from harness.evaluation.calibration import CalibrationBins
from harness.evaluation.diagnostics import DIAGNOSTIC_PREFIX, diagnose, split_diagnostics
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
from harness.evaluation.protocols import predict_labels_and_confidence, predict_logits
from harness.evaluation.samples import SAMPLE_IMAGES, decode_label_map, encode_label_map, sample_indices

__all__ = [
    "DIAGNOSTIC_PREFIX",
    "SAMPLE_IMAGES",
    "SUMMARY_METRICS",
    "CalibrationBins",
    "SemSegEvaluator",
    "class_colors",
    "colorize",
    "diagnose",
    "dataset_sources",
    "decode_label_map",
    "encode_label_map",
    "evaluate",
    "folder_sources",
    "image_iou",
    "legend_image",
    "list_images",
    "mask_to_boundary",
    "predict_labels",
    "predict_labels_and_confidence",
    "predict_logits",
    "sample_indices",
    "split_diagnostics",
    "write_predictions",
]
