"""``BrokenHead``: ``mlp_softmax`` with five seeded contract violations, one per check it must fail:

- logits_shape_and_dtype:        logits come back with height and width swapped;
- gradients_reach_learnable:     a learnable ``unused`` parameter no loss reaches;
- ignored_pixels_change_nothing: the loss ignores label 255, not ``ignore_index``;
- no_training_work_at_inference: an entropy term is returned without targets;
- state_dict_round_trip:         a temperature updated in training, kept as a plain attribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import Features
from classifiers import ClassifierOutput, PixelClassifier


class BrokenHead(PixelClassifier):
    def __init__(self, num_classes: int, in_channels: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes, in_channels, ignore_index)
        self.projection = nn.Conv2d(in_channels, num_classes, 1)
        self.unused = nn.Parameter(torch.zeros(num_classes))
        self.temperature = torch.ones(())

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        logits = (self.projection(features.pixel) / self.temperature).transpose(2, 3)
        entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        if targets is None:
            return ClassifierOutput(logits, {"entropy": 0.1 * entropy})
        upsampled = F.interpolate(logits.transpose(2, 3), size=targets.shape[-2:], mode="bilinear")
        if self.training:
            self.temperature = self.temperature * 1.1
        return ClassifierOutput(logits, {"ce": F.cross_entropy(upsampled, targets.long(), ignore_index=255),
                                         "entropy": 0.1 * entropy})
