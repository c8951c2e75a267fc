"""Boundary IoU's boundaries as detectron2's ``SemSegEvaluator`` draws them (Cheng et al., CVPR 2021):
the band inside each region's edge, 2% of the image diagonal wide, found with OpenCV's erosion."""

from __future__ import annotations

import cv2
import numpy as np

DILATION_RATIO = 0.02
MAX_CLASSES = int(np.iinfo(np.uint8).max)  # label maps are eroded as uint8: boundary IoU needs fewer classes


def mask_to_boundary(labels: np.ndarray, dilation_ratio: float = DILATION_RATIO) -> np.ndarray:
    """The boundary band of a uint8 label map [H, W], as detectron2's ``_mask_to_boundary``: the map
    less its grey erosion by a 3x3 square repeated ``max(1, round(ratio x diagonal))`` times, the
    image framed by a one-pixel zero border first (so regions touching the frame have an edge
    there). Like detectron2's, the result holds label differences inside the band and 0 elsewhere,
    which its boundary confusion matrix counts as labels."""
    height, width = labels.shape
    steps = max(1, int(round(dilation_ratio * float(np.hypot(height, width)))))
    framed = cv2.copyMakeBorder(labels, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inner = cv2.erode(framed, np.ones((3, 3), dtype=np.uint8), iterations=steps)[1:-1, 1:-1]
    return labels - inner
