"""Dataset dict -> model input, with training augmentation (detectron2's mapper role)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from harness.data.sem_seg import image_size, read_image_array, read_label_array, size_mismatch
from harness.data.transforms import (
    Photometric,
    photometric_distortion,
    random_crop_box,
    random_flip,
    random_rescale,
    rescaled_size,
)
from harness.errors import InputError

if TYPE_CHECKING:
    from harness.config import DataConfig


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, MMSegmentation's training pipeline; the defaults other than
    ``crop_size`` change nothing.

    1. ``RandomResize``: the image is rescaled, keeping its ratio, so its short side is at most
       ``short_side`` (None: the crop's longer side) and its long side at most ``max_long_side``
       (None: no cap), both times a ratio drawn from ``scale_range`` (MMSeg's ``scale=(2048, 512),
       ratio_range=(0.5, 2.0)`` is ``max_long_side`` 2048 with a 512 crop); bilinear, labels
       nearest, by mmcv's ``resize_backend`` (``pillow``, anti-aliased, or ``cv2``, MMSeg's default).
    2. ``RandomCrop``: a ``crop_size`` (h, w) window, no larger than the image; with
       ``cat_max_ratio`` < 1 drawn again until no class covers that share of its labels.
    3. ``RandomFlip`` with ``hflip_prob``.
    4. ``PhotoMetricDistortion`` (``photometric``), or segheads' ``color_jitter``: brightness,
       contrast and saturation factors in [1 - j, 1 + j] (torchvision's), always applied.
    5. Padding to ``crop_size``: labels ``ignore``, image pixels 0 after normalisation (MMSeg's
       ``SegDataPreProcessor``): the mapper returns the unpadded size, the model zeroes them.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (1.0, 1.0)
    short_side: int | None = None
    max_long_side: int | None = None
    resize_backend: str = "pillow"
    cat_max_ratio: float = 1.0
    hflip_prob: float = 0.0
    color_jitter: float = 0.0
    photometric: Photometric | None = None

    @classmethod
    def from_config(cls, data: DataConfig, allow_hflip: bool = True) -> AugmentConfig:
        """A cell's augmentation from its ``data`` section (no flips on a dataset whose metadata
        says ``allow_hflip: false``)."""
        p = data.photometric
        photometric = Photometric(p.brightness_delta, tuple(p.contrast_range), tuple(p.saturation_range),
                                  p.hue_delta) if p.enabled else None
        return cls(data.crop_size, tuple(data.scale_range), data.short_side, data.max_long_side, data.resize_backend,
                   data.cat_max_ratio, data.hflip_prob if allow_hflip else 0.0, data.color_jitter, photometric)


class SemSegMapper:
    """Reads one dataset dict and returns ``{"image": uint8 [3,H,W], "sem_seg": long [H,W],
    "file_name", ...}``; in training also ``"image_size"`` (long [2]: the rows and columns the
    image fills before padding to the crop).

    At test time the image keeps its size (evaluation is at original resolution). Augmentation
    draws from a ``numpy.random.RandomState`` seeded by ``seed`` (the training sampler gives each
    sample its own, so a sample's crop does not depend on which process maps it), else from
    NumPy's global generator, as MMSegmentation's transforms do.
    """

    def __init__(self, num_classes: int, ignore_label: int, augment: AugmentConfig | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.augment = augment

    def __call__(self, record: dict, seed: int | None = None) -> dict:
        image = read_image_array(record["file_name"])
        label = read_label_array(record["sem_seg_file_name"], self.num_classes, self.ignore_label)
        mismatch = size_mismatch(record["file_name"], image, record["sem_seg_file_name"], label)
        if mismatch:
            raise InputError(mismatch)
        if self.augment is None:
            return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                    "sem_seg": torch.from_numpy(label).long(), "file_name": record["file_name"]}
        rng = np.random.RandomState(np.random.MT19937(seed)) if seed is not None else np.random
        image, label, filled = self._augment(image, label, rng)
        return {"image": image, "sem_seg": label, "image_size": filled, "file_name": record["file_name"]}

    @property
    def _short_side(self) -> int:
        return self.augment.short_side or max(self.augment.crop_size)

    def is_fixed(self, record: dict) -> bool:
        """Whether training augmentation maps ``record``'s image the same on every draw: one scale,
        no flip, no colour change, and the rescaled image no larger than the crop (the crop has
        one place). The image's size is read from its header."""
        aug = self.augment
        if aug is None:
            return True
        if (aug.scale_range[0] != aug.scale_range[1] or aug.hflip_prob > 0 or aug.color_jitter > 0
                or aug.photometric is not None):
            return False
        width, height = rescaled_size(*image_size(record["file_name"]), aug.scale_range[0], self._short_side,
                                      aug.max_long_side)
        return height <= aug.crop_size[0] and width <= aug.crop_size[1]

    def _augment(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        aug = self.augment
        crop_h, crop_w = aug.crop_size
        image, label = random_rescale(image, label, rng, self._short_side, aug.max_long_side, aug.scale_range,
                                      aug.resize_backend)
        top, left = random_crop_box(label, rng, aug.crop_size, aug.cat_max_ratio, self.ignore_label)
        image, label = image[top : top + crop_h, left : left + crop_w], label[top : top + crop_h, left : left + crop_w]
        if aug.hflip_prob > 0 and random_flip(rng, aug.hflip_prob):
            image, label = image[:, ::-1], label[:, ::-1]
        if aug.photometric is not None:
            image = photometric_distortion(np.ascontiguousarray(image), rng, aug.photometric)
        filled = torch.tensor(label.shape)
        pad_h, pad_w = crop_h - label.shape[0], crop_w - label.shape[1]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        label = torch.from_numpy(np.ascontiguousarray(label)).long()
        if aug.color_jitter > 0:
            low, high = 1 - aug.color_jitter, 1 + aug.color_jitter
            image = TF.adjust_brightness(image, rng.uniform(low, high))
            image = TF.adjust_contrast(image, rng.uniform(low, high))
            image = TF.adjust_saturation(image, rng.uniform(low, high))
        if pad_h or pad_w:
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0)
            label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_label)
        return image, label, filled
