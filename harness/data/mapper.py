"""Dataset dict -> model input, with training augmentation (detectron2's mapper role)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from harness.data.sem_seg import read_image, read_sem_seg
from harness.errors import InputError


@dataclass
class AugmentConfig:
    """Training augmentation; the defaults other than ``crop_size`` change nothing.

    Images are rescaled so their short side is the crop's longer side times a factor drawn from
    ``scale_range`` (MMSegmentation's ``RandomResize`` scales: 512 for 512x512 crops, 1024 for
    Cityscapes' 512x1024), padded (label: ignore) if smaller than the crop, randomly
    cropped to ``crop_size`` (h, w), flipped with ``hflip_prob`` and colour-jittered
    (brightness, contrast, saturation) with factors in [1 - ``color_jitter``, 1 + ``color_jitter``].
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (1.0, 1.0)
    hflip_prob: float = 0.0
    color_jitter: float = 0.0


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


class SemSegMapper:
    """Reads one dataset dict and returns ``{"image": uint8 [3,H,W], "sem_seg": long [H,W], ...}``.

    At test time the image keeps its size (evaluation is at original resolution).
    Augmentation draws from ``generator`` (the training sampler seeds one per sample, so a
    sample's crop does not depend on which process maps it), else from torch's global RNG.
    """

    def __init__(self, num_classes: int, ignore_label: int, augment: AugmentConfig | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.augment = augment

    def __call__(self, record: dict, generator: torch.Generator | None = None) -> dict:
        image = read_image(record["file_name"])
        label = read_sem_seg(record["sem_seg_file_name"], self.num_classes, self.ignore_label)
        if image.size != label.size:
            raise InputError(
                f"image {record['file_name']} is {image.size[0]}x{image.size[1]} but label map "
                f"{record['sem_seg_file_name']} is {label.size[0]}x{label.size[1]}; expected equal sizes"
            )
        if self.augment is not None:
            image, label = self._augment(image, label, generator)
        else:
            image = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            label = torch.from_numpy(np.asarray(label).astype(np.int64))
        return {"image": image, "sem_seg": label, "file_name": record["file_name"]}

    def _rescaled(self, size: tuple[int, int], factor: float) -> tuple[int, int]:
        """(w, h) of an image of ``size`` (w, h) rescaled by scale factor ``factor`` (``AugmentConfig``)."""
        scale = factor * max(self.augment.crop_size) / min(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    def is_fixed(self, record: dict) -> bool:
        """Whether training augmentation maps ``record``'s image the same on every draw: one scale,
        no flip, no colour jitter, and the rescaled image no larger than the crop (the crop has
        one place). The image's size is read from its header."""
        aug = self.augment
        if aug is None:
            return True
        if aug.scale_range[0] != aug.scale_range[1] or aug.hflip_prob > 0 or aug.color_jitter > 0:
            return False
        with Image.open(record["file_name"]) as image:
            width, height = self._rescaled(image.size, aug.scale_range[0])
        return height <= aug.crop_size[0] and width <= aug.crop_size[1]

    def _augment(self, image: Image.Image, label: Image.Image,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.augment
        crop_h, crop_w = aug.crop_size
        size = self._rescaled(image.size, _uniform(*aug.scale_range, generator))
        image = torch.from_numpy(np.asarray(image.resize(size, Image.BILINEAR)).copy()).permute(2, 0, 1)
        label = torch.from_numpy(np.asarray(label.resize(size, Image.NEAREST)).astype(np.int64))
        pad_h, pad_w = max(0, crop_h - label.shape[0]), max(0, crop_w - label.shape[1])
        if pad_h or pad_w:
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0)
            label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_label)
        top = int(torch.randint(0, label.shape[0] - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, label.shape[1] - crop_w + 1, (), generator=generator))
        image = image[:, top : top + crop_h, left : left + crop_w]
        label = label[top : top + crop_h, left : left + crop_w]
        if torch.rand((), generator=generator).item() < aug.hflip_prob:
            image, label = image.flip(-1), label.flip(-1)
        if aug.color_jitter > 0:
            low, high = 1 - aug.color_jitter, 1 + aug.color_jitter
            image = TF.adjust_brightness(image, _uniform(low, high, generator))
            image = TF.adjust_contrast(image, _uniform(low, high, generator))
            image = TF.adjust_saturation(image, _uniform(low, high, generator))
        return image.contiguous(), label.contiguous()
