"""Necks: turn a backbone pyramid into ``Features`` with a common width D.

Registry contract: ``@register_neck(name)`` on a class built as
``cls(in_channels: list[int], strides: list[int], embed_dim: int, **kw)`` whose
``forward(feats: list[Tensor], image_size) -> Features`` returns ``pixel`` (stride 4, or
the decoder's own output stride: ``fcn`` keeps the last stage's) and D-channel maps in
``pyramid``. The one exception is ``stages``, which passes the backbone's maps through at
their own widths (``pyramid_channels``) for heads that reconstruct the stages themselves
(ECENet). A class attribute ``AUXILIARY = True`` says that the neck's models train with the
auxiliary FCN head by default (``mmseg.AuxiliaryFCNHead``).

One family per file: this file holds segheads' own necks (``mlp``, ``fpn``,
``hrnet_concat``, ``stages``), ``mmseg.py`` the papers' baseline decoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from harness.registry import Registry

NECKS: Registry[type[nn.Module]] = Registry("neck")
register_neck = NECKS.register


def list_necks() -> list[str]:
    return NECKS.names()


def build_neck(name: str, in_channels: list[int], strides: list[int], embed_dim: int = 256, **kw) -> nn.Module:
    return NECKS.get(name)(in_channels, strides, embed_dim, **kw)


def neck_accepts(name: str, keyword: str) -> bool:
    """Whether neck ``name``'s constructor takes ``keyword``."""
    import inspect

    return keyword in inspect.signature(NECKS.get(name)).parameters


def neck_uses_auxiliary(name: str) -> bool:
    """Whether neck ``name``'s models train with the auxiliary FCN head by default."""
    return bool(getattr(NECKS.get(name), "AUXILIARY", False))


def _stride4_size(image_size: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(image_size[0] / 4), math.ceil(image_size[1] / 4)


def conv_norm_act(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register_neck("mlp")
class MLPNeck(nn.Module):
    """SegFormer's all-MLP decoder body (Xie et al. 2021, §3.2) without its classifier.

    Each stage is projected to D by a per-pixel linear layer (``pyramid``), all
    are upsampled to stride 4, concatenated and fused by a 1x1 conv + BN + ReLU
    (``pixel``).
    """

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 256) -> None:
        super().__init__()
        self.strides = list(strides)
        self.project = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = conv_norm_act(embed_dim * len(in_channels), embed_dim, 1)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        pyramid = [proj(f) for proj, f in zip(self.project, feats)]
        size = _stride4_size(image_size)
        upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        pixel = self.fuse(torch.cat(upsampled, dim=1))
        return Features(pixel=pixel, pyramid=pyramid, image_size=tuple(image_size))


@register_neck("fpn")
class FPNNeck(nn.Module):
    """Feature Pyramid Network (Lin et al. 2017) with a Semantic-FPN style fusion.

    Lateral 1x1 convs and a top-down pathway give one D-channel map per stage
    (``pyramid``, after 3x3 output convs); ``pixel`` is the sum of all levels
    upsampled to stride 4, followed by a 3x3 conv + BN + ReLU.
    """

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 256) -> None:
        super().__init__()
        self.strides = list(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, 3, padding=1) for _ in in_channels)
        self.fuse = conv_norm_act(embed_dim, embed_dim, 3)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        pyramid = [out(x) for out, x in zip(self.output, laterals)]
        size = _stride4_size(image_size)
        summed = sum(F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid)
        return Features(pixel=self.fuse(summed), pyramid=pyramid, image_size=tuple(image_size))


@register_neck("hrnet_concat")
class HRNetConcatNeck(nn.Module):
    """HRNetV2's representation head (Wang et al. 2020, §3, "HRNetV2"): every stage, raw,
    upsampled to stride 4 and concatenated (48+96+192+384 = 720 channels on HRNetV2-W48),
    then mixed by a 1x1 conv + BN + ReLU to D (``pixel``), as the papers' HRNet rows.

    ``pyramid`` (for heads that read one map per stage, e.g. ECENet) is ``pixel``
    average-pooled to each stage's stride: the head adds no parameters per stage. This is
    our choice; the HRNet papers have no per-stage D maps.
    """

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 256) -> None:
        super().__init__()
        self.strides = list(strides)
        self.fuse = conv_norm_act(sum(in_channels), embed_dim, 1)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        size = _stride4_size(image_size)
        upsampled = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats]
        pixel = self.fuse(torch.cat(upsampled, dim=1))
        pyramid = [F.adaptive_avg_pool2d(pixel, f.shape[-2:]) for f in feats]
        return Features(pixel=pixel, pyramid=pyramid, image_size=tuple(image_size))


@register_neck("stages")
class StagesNeck(nn.Module):
    """No decoder: ``pyramid`` is the backbone's own stage maps, unchanged and at their own
    widths (``pyramid_channels``), and ``pixel`` the finest of them. For heads that are
    whole decoders and take ``stage_channels`` (ECENet's code runs its Feature
    Reconstruction on the raw stages); ``embed_dim`` is then the head's width alone."""

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 256) -> None:
        super().__init__()
        self.strides = list(strides)
        self.pyramid_channels = list(in_channels)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        return Features(pixel=feats[0], pyramid=list(feats), image_size=tuple(image_size))


from backbones.necks import mmseg  # noqa: E402,F401  (registers the papers' decoders)
