"""The contract between necks and classifier heads."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Features:
    """Pixel features handed to a classifier head.

    pixel:      [B, D, h, w], the fused map most heads classify (stride 4, or the
                decoder's own output stride).
    pyramid:    one [B, D, Hi, Wi] map per backbone stage, finest first (the ``stages``
                neck passes the backbone's maps at their own widths instead; a decoder
                with one output gives that one map).
    image_size: (H, W) of the network input, so heads can resample targets.
    auxiliary_logits: [B, C, h, w] a neck's own class prediction (OCRNet's soft object
                regions), which its ``losses(features, targets, ignore_index, average)`` supervises.
    """

    pixel: Tensor
    pyramid: list[Tensor]
    image_size: tuple[int, int]
    auxiliary_logits: Tensor | None = None

    @property
    def embed_dim(self) -> int:
        return self.pixel.shape[1]

    def to(self, device, non_blocking: bool = False) -> Features:
        """These features with every map on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Features(move(self.pixel), [move(t) for t in self.pyramid], self.image_size, move(self.auxiliary_logits))
