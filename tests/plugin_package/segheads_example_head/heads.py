"""``mlp_softmax``: 1x1 conv, BatchNorm, ReLU, then the 1x1 classifier, trained with cross-entropy."""

from __future__ import annotations

from torch import Tensor, nn

from backbones import Features
from classifiers import ClassifierOutput, PixelClassifier, register_classifier


@register_classifier("mlp_softmax")
class MLPSoftmaxClassifier(PixelClassifier):
    """A hidden layer of ``hidden`` channels before the softmax projection. Loss: ``ce``."""

    CONV_SEG = ("projection",)

    def __init__(self, num_classes: int, in_channels: int, ignore_index: int = 255, hidden: int = 64) -> None:
        super().__init__(num_classes, in_channels, ignore_index)
        self.hidden = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.projection = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        logits = self.projection(self.hidden(features.pixel))
        if targets is None:
            return ClassifierOutput(logits)
        return ClassifierOutput(logits, {"ce": self.cross_entropy(logits, targets)})
