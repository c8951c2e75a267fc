"""``Segmentor``: backbone -> neck -> classifier head (+ MMSegmentation's auxiliary FCN head), the unit
every cell trains and measures."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from backbones.necks import conv_norm_act
from classifiers import ClassifierOutput, PixelClassifier
from classifiers.base import pixel_cross_entropy

# The input normalisation every model here uses (images in [0, 255]), ImageNet's statistics.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class AuxiliaryFCNHead(nn.Module):
    """MMSegmentation's auxiliary FCNHead (``num_convs=1``, ``concat_input=False``): a 3x3
    conv of ``channels`` (256) + BN + ReLU on backbone stage ``stage`` (the third,
    ``in_index=2``), Dropout2d(0.1), a 1x1 classifier. Its CE at label resolution, averaged as
    ``average`` says (the cell's head's ``loss_average``), times ``loss_weight`` (0.4), is the loss
    ``aux``. Training only: never run at inference."""

    CONV_SEG = ("classifier",)

    def __init__(self, in_channels: int, num_classes: int, ignore_index: int = 255, channels: int = 256,
                 loss_weight: float = 0.4, stage: int = 2) -> None:
        super().__init__()
        self.stage, self.loss_weight, self.ignore_index = stage, loss_weight, ignore_index
        self.conv = conv_norm_act(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, stages: list[Tensor], targets: Tensor, average: str = "labelled") -> Tensor:
        logits = self.classifier(self.dropout(self.conv(stages[self.stage])))
        return self.loss_weight * pixel_cross_entropy(logits, targets, self.ignore_index, average=average)


class Segmentor(nn.Module):
    """Takes images as float or uint8 RGB in [0, 255], [B, 3, H, W], and normalises them itself.

    ``forward(images, targets, image_sizes=None)`` (``image_sizes``: see ``normalise``) returns the
    head's ``ClassifierOutput`` (logits at the
    head's resolution, losses when targets are given, the ``auxiliary`` head's ``aux`` loss
    and a neck's own losses among them, their CEs averaged as the head's, ``loss_average``); ``forward(None, targets, features=...)`` runs the head
    on features the trunk computed before (``harness.engine.features``); ``predict(images)``
    returns logits upsampled to the input size, with no training-only work.

    The trunk is the backbone and the neck. ``freeze_trunk()`` stops its gradients and keeps it
    in eval mode (BatchNorm statistics fixed) whatever ``train()`` says: only the head trains.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, classifier: PixelClassifier,
                 auxiliary: AuxiliaryFCNHead | None = None) -> None:
        super().__init__()
        self.backbone, self.neck, self.classifier, self.auxiliary = backbone, neck, classifier, auxiliary
        self.trunk_frozen = False
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def freeze_trunk(self) -> None:
        if self.auxiliary is not None:
            raise ValueError("a frozen trunk trains no auxiliary head (it would only train itself)")
        self.trunk_frozen = True
        for parameter in [*self.backbone.parameters(), *self.neck.parameters()]:
            parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Segmentor:
        super().train(mode)
        if self.trunk_frozen:
            self.backbone.eval()
            self.neck.eval()
        return self

    def normalise(self, images: Tensor, image_sizes: Tensor | None = None) -> Tensor:
        """``images`` in [0, 255] less the mean, over the standard deviation; with ``image_sizes``
        ([B, 2], the rows and columns each image fills before padding to the batch's size) the
        padding is 0 afterwards: the mean colour, as MMSegmentation's ``SegDataPreProcessor`` pads."""
        images = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        if image_sizes is None:
            return images
        height, width = images.shape[-2:]
        rows = torch.arange(height, device=images.device) < image_sizes[:, :1]  # [B, H]
        cols = torch.arange(width, device=images.device) < image_sizes[:, 1:]  # [B, W]
        return images * (rows[:, None, :, None] & cols[:, None, None, :])

    def trunk(self, images: Tensor, image_sizes: Tensor | None = None) -> tuple[list[Tensor], Features]:
        """(backbone stages, neck features) of ``images`` (``normalise``); without gradients when the
        trunk is frozen."""
        with torch.no_grad() if self.trunk_frozen else contextlib.nullcontext():
            images = self.normalise(images, image_sizes)
            stages = self.backbone(images)
            return stages, self.neck(stages, tuple(images.shape[-2:]))

    def forward(self, images: Tensor | None, targets: Tensor | None = None,
                features: Features | None = None, image_sizes: Tensor | None = None) -> ClassifierOutput:
        stages = None
        if features is None:
            stages, features = self.trunk(images, image_sizes)
        output = self.classifier(features, targets)
        if targets is not None and not self.trunk_frozen:
            average = self.classifier.loss_average
            if self.auxiliary is not None:
                output.losses["aux"] = self.auxiliary(stages, targets, average)
            if hasattr(self.neck, "losses"):  # a neck with its own prediction (OCRNet's regions)
                output.losses.update(self.neck.losses(features, targets, self.classifier.ignore_index, average))
        return output

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        logits = self(images).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
