"""The papers' encoders, by the names their tables use (ProtoSeg Tables 1-2, ECENet Table 1,
SSA Table 2), built with ``pretrained=False`` (``checkpoint=PATH`` loads weights):

| name | encoder | maps (strides) |
|---|---|---|
| ``resnet101_os8`` | ResNet-101 (timm ``resnet101``), last two stages dilated: output stride 8 as in FCN/PSPNet | 4, 8, 8, 8 |
| ``hrnetv2_w48`` | HRNetV2-W48 (timm ``hrnet_w48``), the four branches (48/96/192/384 ch); pair with the ``hrnet_concat`` neck | 4, 8, 16, 32 |
| ``swin_t``, ``swin_b``, ``swin_l`` | Swin-T (window 7), Swin-B/L (window 12) from timm, any input size | 4, 8, 16, 32 |
| ``mit_b0`` .. ``mit_b5`` | SegFormer's Mix Transformer from ``transformers``' ``SegformerModel`` built from its config | 4, 8, 16, 32 |

ConvNeXt (``convnext_tiny`` ...) and MobileNetV2 (``mobilenetv2_100``) are timm names as they are.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from backbones.build import register_backbone
from backbones.timm_backbone import TimmBackbone, load_checkpoint
from harness.errors import InputError

_SWIN = {"swin_t": "swin_tiny_patch4_window7_224", "swin_b": "swin_base_patch4_window12_384",
         "swin_l": "swin_large_patch4_window12_384"}
# SegFormer (Xie et al. 2021) Table 6: channels per stage and blocks per stage of MiT-B0..B5.
_MIT = {"mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]), "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
        "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]), "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
        "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]), "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3])}


@register_backbone("resnet101_os8")
def resnet101_os8(**kw) -> nn.Module:
    return TimmBackbone("resnet101", output_stride=8, **kw)


@register_backbone("hrnetv2_w48")
def hrnetv2_w48(**kw) -> nn.Module:
    return TimmBackbone("hrnet_w48", feature_location="", input_multiple=32, **kw)


def _swin(timm_name: str):
    def build(**kw) -> nn.Module:
        return TimmBackbone(timm_name, strict_img_size=False, input_multiple=32, **kw)
    return build


for _name, _timm_name in _SWIN.items():
    register_backbone(_name)(_swin(_timm_name))


class MixTransformer(nn.Module):
    """SegFormer's hierarchical encoder (``transformers.SegformerModel``, random init): four
    NCHW maps at strides 4, 8, 16, 32. ``checkpoint`` loads a state dict of that model."""

    def __init__(self, variant: str, pretrained: bool = False, checkpoint: str | None = None) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerModel

        if pretrained:
            raise InputError(f"backbone {variant!r}: pretrained=True would download weights; "
                             "pass checkpoint=PATH to a local state dict instead")
        channels, depths = _MIT[variant]
        config = SegformerConfig(hidden_sizes=channels, depths=depths, num_attention_heads=[1, 2, 5, 8],
                                 sr_ratios=[8, 4, 2, 1], decoder_hidden_size=256 if variant == "mit_b0" else 768)
        self.body = SegformerModel(config)
        self.channels, self.strides = list(channels), [4, 8, 16, 32]
        if checkpoint is not None:
            load_checkpoint(self.body, Path(checkpoint), variant)

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(pixel_values=images, output_hidden_states=True).hidden_states)


def _mit(variant: str):
    def build(**kw) -> nn.Module:
        return MixTransformer(variant, **kw)
    return build


for _name in _MIT:
    register_backbone(_name)(_mit(_name))
