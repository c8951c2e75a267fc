"""Calibration of pixel predictions: the expected calibration error over equal-width bins of the top
class's probability (Guo et al., ICML 2017, Eq. 3), and the bins a reliability diagram draws."""

from __future__ import annotations

import numpy as np

BINS = 15


class CalibrationBins:
    """Pixels counted into ``bins`` equal-width confidence bins, (k/B, (k+1)/B] (the first also
    holds 0): for each bin the pixel count, the sum of confidences and the number predicted right."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.count = np.zeros(bins, dtype=np.int64)
        self.confidence = np.zeros(bins, dtype=np.float64)
        self.correct = np.zeros(bins, dtype=np.int64)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """``confidence``: the top class's probability of each counted pixel; ``correct``: whether
        that class is the pixel's label (both 1-d, ignore pixels already left out)."""
        index = np.clip(np.ceil(confidence * self.bins).astype(np.int64) - 1, 0, self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.confidence += np.bincount(index, weights=confidence, minlength=self.bins)
        self.correct += np.bincount(index, weights=correct, minlength=self.bins).astype(np.int64)

    def metrics(self) -> dict[str, float]:
        """``ECE`` (percent: sum over bins of share x |accuracy - mean confidence|) and, per bin
        ``k``, ``reliability/accuracy-k``, ``reliability/confidence-k`` (percent; NaN for an empty
        bin) and ``reliability/share-k`` (percent of the counted pixels)."""
        total = int(self.count.sum())
        if not total:
            return {}
        filled = self.count > 0
        accuracy = np.full(self.bins, np.nan)
        confidence = np.full(self.bins, np.nan)
        accuracy[filled] = self.correct[filled] / self.count[filled]
        confidence[filled] = self.confidence[filled] / self.count[filled]
        out = {"ECE": 100 * float(np.abs(self.correct - self.confidence).sum() / total)}
        for k in range(self.bins):
            out[f"reliability/accuracy-{k:02d}"] = 100 * float(accuracy[k])
            out[f"reliability/confidence-{k:02d}"] = 100 * float(confidence[k])
            out[f"reliability/share-{k:02d}"] = 100 * float(self.count[k] / total)
        return out
