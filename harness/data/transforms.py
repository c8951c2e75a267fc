"""The training transforms, as MMSegmentation's pipelines compute them (``mmcv.transforms``
``RandomResize`` and ``RandomFlip``, ``mmseg.datasets.transforms`` ``RandomCrop`` and
``PhotoMetricDistortion``), on RGB uint8 arrays [H, W, 3] and label maps [H, W].

Each random transform draws from a ``numpy.random.RandomState`` with the same calls, in the same
order, as MMSegmentation's draws from NumPy's global generator: given the same state, the same
draws (``tests/peers/test_mmseg_pipeline.py``). The arithmetic is the same too (mmcv's resize, cv2's
or Pillow's;
``PhotoMetricDistortion``'s float32 multiply-add, clip and truncation, as 256-entry tables), so
images equal MMSeg's and labels equal them exactly."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Photometric:
    """``PhotoMetricDistortion``'s settings: brightness + U(-delta, delta), contrast and saturation
    x U(range), hue + U{-delta, .., delta - 1} (OpenCV's 180 hues), each applied with probability 0.5,
    contrast first or last at random."""

    brightness_delta: float = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18


def rescale_size(width: int, height: int, short_side: int | None, long_side: int | None) -> tuple[int, int]:
    """(w, h) of an image rescaled, keeping its ratio, so that its short side is at most
    ``short_side`` and its long side at most ``long_side`` (either None: no bound; both: the size
    as it is), as MMCV's ``rescale_size`` (``int(x * factor + 0.5)``) for training and test resizes."""
    factors = [bound / side for bound, side in ((short_side, min(width, height)), (long_side, max(width, height)))
               if bound is not None]
    if not factors:
        return width, height
    factor = min(factors)
    return int(width * factor + 0.5), int(height * factor + 0.5)


def rescaled_size(width: int, height: int, ratio: float, short_side: int, long_side: int | None) -> tuple[int, int]:
    """(w, h) of a ``width`` x ``height`` image after ``RandomResize`` drew ``ratio``: the scale
    (``long_side``, ``short_side``) times the ratio, each truncated to whole pixels, then
    ``rescale_size``."""
    return rescale_size(width, height, int(short_side * ratio), None if long_side is None else int(long_side * ratio))




def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int], backend: str) -> tuple[np.ndarray, np.ndarray]:
    """``image`` bilinear and ``label`` nearest to ``size`` (w, h), as mmcv's ``imresize`` with
    ``backend``: ``cv2`` (MMSegmentation's default) or ``pillow``, whose bilinear filter widens
    when it shrinks an image (anti-aliased)."""
    if backend == "cv2":
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
    return (np.array(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.array(Image.fromarray(label).resize(size, Image.NEAREST)))


def random_rescale(image: np.ndarray, label: np.ndarray, rng: np.random.RandomState, short_side: int,
                   long_side: int | None, ratio_range: tuple[float, float],
                   backend: str = "cv2") -> tuple[np.ndarray, np.ndarray]:
    """``RandomResize(scale=(long_side, short_side), ratio_range, keep_ratio=True, backend)``: both
    sides times one ratio drawn from ``ratio_range`` (truncated to whole pixels), then ``resize``.
    ``long_side`` None: no cap."""
    ratio = rng.random_sample() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    size = rescaled_size(image.shape[1], image.shape[0], ratio, short_side, long_side)
    if size == (image.shape[1], image.shape[0]):
        return image, label
    return resize(image, label, size, backend)


def random_crop_box(label: np.ndarray, rng: np.random.RandomState, crop: tuple[int, int], cat_max_ratio: float,
                    ignore_label: int) -> tuple[int, int]:
    """``RandomCrop(crop, cat_max_ratio)``'s (top, left): a crop no larger than the image; with
    ``cat_max_ratio`` < 1, drawn again (up to 10 times) until no class covers that share of the
    crop's labelled pixels and it holds more than one class; the last draw stands."""
    margin_h, margin_w = max(label.shape[0] - crop[0], 0), max(label.shape[1] - crop[1], 0)

    def draw() -> tuple[int, int]:
        return rng.randint(0, margin_h + 1), rng.randint(0, margin_w + 1)

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = np.bincount(label[top : top + crop[0], left : left + crop[1]].ravel(), minlength=256)
            counts[ignore_label] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return top, left


def random_flip(rng: np.random.RandomState, prob: float) -> bool:
    """``RandomFlip(prob)``'s choice, as ``np.random.choice([horizontal, None], p=[prob, 1 - prob])`` draws it."""
    return rng.random_sample() < prob


def _convert(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``PhotoMetricDistortion.convert`` as a table over the 256 grey levels: float32 x alpha + beta,
    clipped to [0, 255], truncated to uint8."""
    return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _hsv_channel(image: np.ndarray, channel: int, table: np.ndarray) -> np.ndarray:
    """``image`` (RGB) through HSV with one channel mapped by ``table`` and back (OpenCV's uint8 HSV)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., channel] = table[hsv[..., channel]]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def photometric_distortion(image: np.ndarray, rng: np.random.RandomState, settings: Photometric) -> np.ndarray:
    """``PhotoMetricDistortion``: brightness, then contrast (mode 1), saturation, hue, contrast
    (mode 0), each with probability 0.5; saturation and hue each take their own trip through HSV,
    as MMSeg's do. Brightness and a following contrast compose into one table."""
    s = settings
    table = _convert(beta=rng.uniform(-s.brightness_delta, s.brightness_delta)) if rng.randint(2) else None
    contrast_first = rng.randint(2) == 1

    def contrast(current):
        if not rng.randint(2):
            return current
        step = _convert(alpha=rng.uniform(*s.contrast_range))
        return step if current is None else step[current]

    if contrast_first:
        table = contrast(table)
    if table is not None:
        image = cv2.LUT(image, table)
    if rng.randint(2):
        image = _hsv_channel(image, 1, _convert(alpha=rng.uniform(*s.saturation_range)))
    if rng.randint(2):
        image = _hsv_channel(image, 0, ((np.arange(256) + rng.randint(-s.hue_delta, s.hue_delta)) % 180).astype(np.uint8))
    if not contrast_first:
        table = contrast(None)
        if table is not None:
            image = cv2.LUT(image, table)
    return image
