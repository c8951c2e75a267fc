"""``Segmentor``: backbone -> neck -> classifier head, the unit every cell trains and measures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from classifiers import ClassifierOutput, PixelClassifier

_IMAGENET_MEAN = (123.675, 116.28, 103.53)
_IMAGENET_STD = (58.395, 57.12, 57.375)


class Segmentor(nn.Module):
    """Takes images as float or uint8 RGB in [0, 255], [B, 3, H, W], and normalises them itself.

    ``forward(images, targets)`` returns the head's ``ClassifierOutput`` (logits at the
    head's resolution, losses when targets are given); ``predict(images)`` returns
    logits upsampled to the input size, with no training-only work.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, classifier: PixelClassifier) -> None:
        super().__init__()
        self.backbone, self.neck, self.classifier = backbone, neck, classifier
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> ClassifierOutput:
        images = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        features = self.neck(self.backbone(images), tuple(images.shape[-2:]))
        return self.classifier(features, targets)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        logits = self(images).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
