"""The contract between necks and classifier heads."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Features:
    """Pixel features handed to a classifier head.

    pixel:      [B, D, ceil(H/4), ceil(W/4)], the fused map most heads classify.
    pyramid:    one [B, D, Hi, Wi] map per backbone stage, finest first (the ``stages``
                neck passes the backbone's maps at their own widths instead).
    image_size: (H, W) of the network input, so heads can resample targets.
    """

    pixel: Tensor
    pyramid: list[Tensor]
    image_size: tuple[int, int]

    @property
    def embed_dim(self) -> int:
        return self.pixel.shape[1]
