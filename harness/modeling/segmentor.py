"""``Segmentor``: backbone -> neck -> classifier head (+ MMSegmentation's auxiliary FCN head), the unit
every cell trains and measures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.necks import conv_norm_act
from classifiers import ClassifierOutput, PixelClassifier
from classifiers.base import pixel_cross_entropy

# The input normalisation every model here uses (images in [0, 255]), ImageNet's statistics.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class AuxiliaryFCNHead(nn.Module):
    """MMSegmentation's auxiliary FCNHead (``num_convs=1``, ``concat_input=False``): a 3x3
    conv of ``channels`` (256) + BN + ReLU on backbone stage ``stage`` (the third,
    ``in_index=2``), Dropout2d(0.1), a 1x1 classifier. Its CE at label resolution, times
    ``loss_weight`` (0.4), is the loss ``aux``. Training only: never run at inference."""

    CONV_SEG = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int, ignore_index: int = 255, channels: int = 256,
                 loss_weight: float = 0.4, stage: int = 2) -> None:
        super().__init__()
        self.stage, self.loss_weight, self.ignore_index = stage, loss_weight, ignore_index
        self.conv = conv_norm_act(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, stages: list[Tensor], targets: Tensor) -> Tensor:
        logits = self.classifier(self.dropout(self.conv(stages[self.stage])))
        return self.loss_weight * pixel_cross_entropy(logits, targets, self.ignore_index)


class Segmentor(nn.Module):
    """Takes images as float or uint8 RGB in [0, 255], [B, 3, H, W], and normalises them itself.

    ``forward(images, targets)`` returns the head's ``ClassifierOutput`` (logits at the
    head's resolution, losses when targets are given, the ``auxiliary`` head's ``aux`` loss
    and a neck's own losses among them); ``predict(images)`` returns logits upsampled to the input size, with no
    training-only work.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, classifier: PixelClassifier,
                 auxiliary: AuxiliaryFCNHead | None = None) -> None:
        super().__init__()
        self.backbone, self.neck, self.classifier, self.auxiliary = backbone, neck, classifier, auxiliary
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> ClassifierOutput:
        images = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        stages = self.backbone(images)
        features = self.neck(stages, tuple(images.shape[-2:]))
        output = self.classifier(features, targets)
        if targets is not None:
            if self.auxiliary is not None:
                output.losses["aux"] = self.auxiliary(stages, targets)
            if hasattr(self.neck, "losses"):  # a neck with its own prediction (OCRNet's regions)
                output.losses.update(self.neck.losses(features, targets, self.classifier.ignore_index))
        return output

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        logits = self(images).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
