"""The papers' baseline decoders as necks, with MMSegmentation's structure and default
widths (``mmseg/models/decode_heads/fcn_head.py``, ``uper_head.py``, ``psp_head.py``,
``segformer_head.py``, ``sep_aspp_head.py``, ``ocr_head.py``).

Each neck is the decoder up to, not including, its final 1x1 classifier (``conv_seg``),
which is the classifier head's job: ``Features.pixel`` is the map MMSegmentation's
``cls_seg`` sees, after its Dropout2d(0.1) (none in HRNet's and OCRNet's heads,
``dropout_ratio=-1``). ``embed_dim`` is the decoder's ``channels``
(512 in the papers' FCN and UperNet configs, 768 for SegFormer on MiT-B1..B5, 720 for
HRNetV2-W48). Convolutions are MMSegmentation's ``ConvModule``: conv without bias,
BatchNorm, ReLU.

================ ========================================================= ======= =========
neck             structure                                                 stride  auxiliary
================ ========================================================= ======= =========
``fcn``          FCNHead on the last stage: 2 convs 3x3, input             last    yes
                 concatenated, a 3x3 fuse (``num_convs=2, concat_input``)  stage's
``upernet``      UPerHead: PPM (scales 1, 2, 3, 6) on the last stage +     4       yes
                 FPN (1x1 laterals, 3x3 outputs), all four fused by a 3x3
``segformer``    SegformerHead: a 1x1 ConvModule per stage, resized to     4       no
                 the first stage, concatenated, a 1x1 fuse
``hrnet_fcn``    HRNetV2's FCNHead: every branch resized to stride 4 and   4       no
                 concatenated (720 ch on W48), a 1x1 ConvModule
``deeplabv3plus`` DepthwiseSeparableASPPHead: image pooling, 1x1 and       first   yes
                 separable 3x3 at dilations 12/24/36 on the last stage, a  stage's
                 3x3 bottleneck; the first stage through a 1x1 to 48,
                 concatenated, two separable 3x3
``ocr``          OCRNet on HRNetV2: soft object regions from its own       4       no (its
                 prediction (loss ``regions``, 0.4), class centres, the            regions'
                 object attention block; ``num_classes`` from the model            loss)
================ ========================================================= ======= =========

``AUXILIARY`` says whether a neck's models train with MMSegmentation's auxiliary FCN head
(``harness.modeling.segmentor.AuxiliaryFCNHead``) by default, as the papers' configs do;
``model.neck_kwargs.auxiliary`` overrides it. The auxiliary head is training-only: it
never runs at inference, and its parameters are counted apart (``params/auxiliary``,
inside ``params/training_only``). ``Features.pyramid`` holds the decoder's own D-wide
maps: ``upernet``'s four FPN outputs, ``segformer``'s four projections, ``fcn``'s one
output map (as ``deeplabv3plus``'s), ``hrnet_fcn``'s output pooled to each branch's stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from backbones.necks import HRNetConcatNeck, conv_norm_act, register_neck

_DROPOUT = 0.1  # BaseDecodeHead's dropout_ratio, applied before conv_seg


@register_neck("fcn")
class FCNNeck(nn.Module):
    """MMSegmentation's FCNHead (``num_convs=2``, ``concat_input=True``, kernel 3) on the last stage."""

    AUXILIARY = True

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 512, num_convs: int = 2) -> None:
        super().__init__()
        width = in_channels[-1]
        self.convs = nn.Sequential(*(conv_norm_act(width if i == 0 else embed_dim, embed_dim, 3) for i in range(num_convs)))
        self.fuse = conv_norm_act(width + embed_dim, embed_dim, 3)
        self.dropout = nn.Dropout2d(_DROPOUT)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        last = feats[-1]
        pixel = self.dropout(self.fuse(torch.cat([last, self.convs(last)], dim=1)))
        return Features(pixel, [pixel], image_size)


@register_neck("upernet")
class UperNetNeck(nn.Module):
    """MMSegmentation's UPerHead: a pyramid pooling module on the last stage, an FPN over all."""

    AUXILIARY = True

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 512,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_norm_act(in_channels[-1], embed_dim, 1))
                                   for scale in pool_scales)
        self.bottleneck = conv_norm_act(in_channels[-1] + len(pool_scales) * embed_dim, embed_dim, 3)
        self.laterals = nn.ModuleList(conv_norm_act(c, embed_dim, 1) for c in in_channels[:-1])
        self.outputs = nn.ModuleList(conv_norm_act(embed_dim, embed_dim, 3) for _ in in_channels[:-1])
        self.fuse = conv_norm_act(len(in_channels) * embed_dim, embed_dim, 3)
        self.dropout = nn.Dropout2d(_DROPOUT)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        last = feats[-1]
        pooled = [_resize(pool(last), last.shape[-2:]) for pool in self.pools]
        laterals = [lateral(x) for lateral, x in zip(self.laterals, feats)] + [self.bottleneck(torch.cat([last, *pooled], 1))]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.outputs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        pixel = self.dropout(self.fuse(torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1)))
        return Features(pixel, outs, image_size)


def _resize(x: Tensor, size) -> Tensor:
    """MMSegmentation's ``resize``: bilinear, ``align_corners=False``."""
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


@register_neck("segformer")
class SegFormerNeck(nn.Module):
    """MMSegmentation's SegformerHead: each stage through a 1x1 ConvModule to D, resized to
    the first stage's size, concatenated, fused by a 1x1 ConvModule (``channels`` 256 for
    MiT-B0, 768 for B1-B5 in MMSegmentation's configs). ``segheads``' ``mlp`` neck is the
    SegFormer paper's version (linear projections with bias, no norm)."""

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 768) -> None:
        super().__init__()
        self.project = nn.ModuleList(conv_norm_act(c, embed_dim, 1) for c in in_channels)
        self.fuse = conv_norm_act(len(in_channels) * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(_DROPOUT)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        pyramid = [project(x) for project, x in zip(self.project, feats)]
        size = pyramid[0].shape[-2:]
        pixel = self.dropout(self.fuse(torch.cat([_resize(x, size) for x in pyramid], dim=1)))
        return Features(pixel, pyramid, image_size)


@register_neck("hrnet_fcn")
class HRNetFCNNeck(HRNetConcatNeck):
    """MMSegmentation's FCNHead on HRNetV2 (``input_transform="resize_concat"``, one 1x1
    ConvModule of ``channels`` = 720, ``concat_input=False``, ``dropout_ratio=-1``: no dropout
    before ``conv_seg``, ``configs/_base_/models/fcn_hr18.py``): ``hrnet_concat`` at 720 channels."""

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 720) -> None:
        super().__init__(in_channels, strides, embed_dim)


def _separable(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """MMSegmentation's DepthwiseSeparableConvModule: a depthwise 3x3 (``dilation``) + BN +
    ReLU, then a pointwise 1x1 + BN + ReLU, both bias-free."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True), conv_norm_act(cin, cout, 1))


@register_neck("deeplabv3plus")
class DeepLabV3PlusNeck(nn.Module):
    """MMSegmentation's DepthwiseSeparableASPPHead on the last stage (image pooling, a 1x1
    branch and separable 3x3 branches at ``dilations`` 12/24/36, a 3x3 bottleneck), then
    the decoder: the stride-4 stage through a 1x1 to ``low_level_channels`` (48),
    concatenated with the upsampled ASPP output, two separable 3x3 convs."""

    AUXILIARY = True

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 512,
                 dilations: tuple[int, ...] = (12, 24, 36), low_level_channels: int = 48) -> None:
        super().__init__()
        last = in_channels[-1]
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_norm_act(last, embed_dim, 1))
        self.branches = nn.ModuleList([conv_norm_act(last, embed_dim, 1)] + [_separable(last, embed_dim, d) for d in dilations])
        self.bottleneck = conv_norm_act((len(dilations) + 2) * embed_dim, embed_dim, 3)
        self.low_level = conv_norm_act(in_channels[0], low_level_channels, 1)
        self.decoder = nn.Sequential(_separable(embed_dim + low_level_channels, embed_dim), _separable(embed_dim, embed_dim))
        self.dropout = nn.Dropout2d(_DROPOUT)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        last = feats[-1]
        branches = [_resize(self.image_pool(last), last.shape[-2:])] + [branch(last) for branch in self.branches]
        aspp = self.bottleneck(torch.cat(branches, dim=1))
        low = self.low_level(feats[0])
        pixel = self.dropout(self.decoder(torch.cat([_resize(aspp, low.shape[-2:]), low], dim=1)))
        return Features(pixel, [pixel], image_size)


@register_neck("ocr")
class OCRNeck(nn.Module):
    """OCRNet (MMSegmentation's cascade of FCNHead and OCRHead on HRNetV2): every stage
    resized to stride 4 and concatenated; soft object regions from its own prediction (a
    1x1 ConvModule of the concatenation's width and a 1x1 classifier to ``num_classes``,
    supervised by CE weighted ``REGION_LOSS_WEIGHT`` 0.4, the loss ``regions``); a 3x3
    bottleneck to D (512); class centres gathered by the regions' softmax over pixels;
    the object attention block (query and key through two 1x1 ConvModules to
    ``ocr_channels`` 256, value one, softmax(q k / sqrt(256)) over classes, a 1x1 back to D,
    concatenated with the pixels and fused by a 1x1). ``Features.pixel`` is that
    object-contextual representation; ``Features.auxiliary_logits`` the regions."""

    REGION_LOSS_WEIGHT = 0.4
    CONV_SEG = ("regions.1",)  # the cascaded FCNHead's conv_seg

    def __init__(self, in_channels: list[int], strides: list[int], embed_dim: int = 512, num_classes: int = 150,
                 ocr_channels: int = 256) -> None:
        super().__init__()
        width = sum(in_channels)
        self.regions = nn.Sequential(conv_norm_act(width, width, 1), nn.Conv2d(width, num_classes, 1))
        self.bottleneck = conv_norm_act(width, embed_dim, 3)
        self.query = nn.Sequential(conv_norm_act(embed_dim, ocr_channels, 1), conv_norm_act(ocr_channels, ocr_channels, 1))
        self.key = nn.Sequential(conv_norm_act(embed_dim, ocr_channels, 1), conv_norm_act(ocr_channels, ocr_channels, 1))
        self.value = conv_norm_act(embed_dim, ocr_channels, 1)
        self.out = conv_norm_act(ocr_channels, embed_dim, 1)
        self.fuse = conv_norm_act(2 * embed_dim, embed_dim, 1)

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> Features:
        size = feats[0].shape[-2:]
        x = torch.cat([_resize(f, size) for f in feats], dim=1)
        regions = self.regions(x)  # [B, C, h, w]
        pixels = self.bottleneck(x)  # [B, D, h, w]
        weights = regions.flatten(2).softmax(dim=2)  # each class's distribution over pixels
        centres = torch.bmm(weights, pixels.flatten(2).transpose(1, 2))  # [B, C, D]
        centres = centres.transpose(1, 2).unsqueeze(-1)  # [B, D, C, 1], as MMSegmentation's key map
        query = self.query(pixels).flatten(2).transpose(1, 2)  # [B, hw, c]
        key, value = self.key(centres).flatten(2), self.value(centres).flatten(2).transpose(1, 2)  # [B, c, C], [B, C, c]
        attention = torch.bmm(query, key).mul_(key.shape[1] ** -0.5).softmax(dim=-1)  # [B, hw, C]
        context = torch.bmm(attention, value).transpose(1, 2).reshape(pixels.shape[0], -1, *size)
        pixel = self.fuse(torch.cat([self.out(context), pixels], dim=1))
        return Features(pixel, [pixel], image_size, auxiliary_logits=regions)

    def losses(self, features: Features, targets: Tensor, ignore_index: int, average: str) -> dict[str, Tensor]:
        """The soft object regions' CE, averaged as ``average`` says (``classifiers.base.LOSS_AVERAGES``;
        training only, called by ``Segmentor`` with targets)."""
        from classifiers.base import pixel_cross_entropy

        return {"regions": self.REGION_LOSS_WEIGHT * pixel_cross_entropy(features.auxiliary_logits, targets, ignore_index,
                                                                          average=average)}
