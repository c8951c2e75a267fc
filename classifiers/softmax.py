"""Parametric softmax projection (ProtoSeg, CVPR 2022, §2, Eq. 1)."""

from __future__ import annotations

from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import ClassifierOutput, PixelClassifier
from classifiers.registry import register_classifier


@register_classifier("softmax")
class SoftmaxClassifier(PixelClassifier):
    """p(c|i) = softmax_c(w_c^T i + b_c) (Eq. 1): a 1x1 conv over ``features.pixel``.

    The paper omits the bias "for brevity"; like every FCN head we keep it.
    ``dropout`` (default 0, as in Eq. 1) is the Dropout2d MMSegmentation heads put
    before the projection. Loss: ``ce``, cross-entropy with ``ignore_index``, averaged over the
    labelled pixels (``loss_average="labelled"``) or over all of them (``"all"``, what
    MMSegmentation's baselines run: the papers' specs set it).
    """

    CONV_SEG = ("projection",)

    def __init__(self, num_classes: int, in_channels: int, ignore_index: int = 255, dropout: float = 0.0,
                 loss_average: str = "labelled") -> None:
        super().__init__(num_classes, in_channels, ignore_index, loss_average)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        logits = self.projection(self.dropout(features.pixel))
        if targets is None:
            return ClassifierOutput(logits)
        return ClassifierOutput(logits, {"ce": self.cross_entropy(logits, targets)})
