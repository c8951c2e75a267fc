"""The papers' encoders, by the names their tables use (ProtoSeg Tables 1-2, ECENet Table 1,
SSA Table 2), built with ``pretrained=False``; ``checkpoint=PATH`` loads ImageNet weights whole
(``backbones.weights``), ``pretrained=True`` downloads them where the machine may:

| name | encoder | maps (strides) |
|---|---|---|
| ``resnet101_os8`` | ResNet-101 V1c (timm ``resnet101c``: the deep stem of three 3x3 convs, MMSegmentation's ``ResNetV1c``), last two stages dilated: output stride 8 as in FCN/PSPNet | 4, 8, 8, 8 |
| ``hrnetv2_w48`` | HRNetV2-W48 (timm ``hrnet_w48``, its branches fused as MMSegmentation's: bilinear upsampling resized to each branch, any input size), the four branches (48/96/192/384 ch); pair with the ``hrnet_concat`` neck | 4, 8, 16, 32 |
| ``swin_t``, ``swin_s``, ``swin_b``, ``swin_l`` | Swin-T/S (window 7), Swin-B/L (window 12) as MMSegmentation computes them (``backbones.swin``: pad then shift, output norms, drop-path 0.3), any input size | 4, 8, 16, 32 |
| ``mit_b0`` .. ``mit_b5`` | SegFormer's Mix Transformer from ``transformers``' ``SegformerModel`` built from its config | 4, 8, 16, 32 |

Swin loads MMSegmentation's, the official release's and timm's files (``backbones.swin``).
The ResNet-101 and HRNet also load MMSegmentation's files (``resnet101_v1c``, ``hrnetv2_w48``, bare
or a segmentor's ``backbone.*``): ``_from_mmseg`` renames V1c's ``stem`` to timm's ``conv1``/``bn1``;
HRNet's names are the same in both. MiT loads MMSegmentation's ``mit_b*.pth`` (``_from_mmseg_mit``).

ConvNeXt (``convnext_tiny`` ...) and MobileNetV2 (``mobilenetv2_100``) are timm names as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule
from torch import Tensor, nn

from backbones.build import register_backbone
from backbones.swin import VARIANTS as _SWIN
from backbones.swin import SwinTransformer
from backbones.timm_backbone import TimmBackbone
from backbones.weights import WeightsReport, check_complete, read_state_dict, wrong_shapes_error
from harness.errors import InputError, first_line

# SegFormer (Xie et al. 2021) Table 6: channels per stage and blocks per stage of MiT-B0..B5.
_MIT = {"mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]), "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
        "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]), "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
        "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]), "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3])}
_MIT_HUB = "nvidia/mit-b{}"  # SegFormer's ImageNet-1K encoders on the model hub
_MIT_LAYER_NORM_EPS = 1e-6  # every LayerNorm of MMSeg's MiT (norm_cfg=dict(type="LN", eps=1e-6)); transformers' are 1e-5


_MMSEG_PREFIX = "backbone."  # an MMSegmentation segmentor checkpoint's encoder
# MMSeg ResNetV1c's stem (Sequential: conv, norm, ReLU x 3) -> timm's deep stem (conv1 Sequential + bn1)
_V1C_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
             "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def _mmseg_encoder(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A segmentor checkpoint's encoder (its ``backbone.*`` tensors, unprefixed); ``state`` as it
    is when it has none."""
    if any(key.startswith(_MMSEG_PREFIX) for key in state):
        return {k.removeprefix(_MMSEG_PREFIX): v for k, v in state.items() if k.startswith(_MMSEG_PREFIX)}
    return state


def _from_mmseg(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An MMSegmentation ResNet or HRNet state dict under timm's names: a segmentor checkpoint's
    ``backbone.*`` tensors only, V1c's ``stem.N`` as timm's deep stem; others as they are."""
    renamed = {}
    for key, value in _mmseg_encoder(state).items():
        prefix = next((p for p in _V1C_STEM if key.startswith(p)), None)
        renamed[_V1C_STEM[prefix] + key[len(prefix):] if prefix else key] = value
    return renamed


@register_backbone("resnet101_os8")
def resnet101_os8(**kw) -> nn.Module:
    return TimmBackbone("resnet101c", output_stride=8, convert=_from_mmseg, **kw)


class _MMSegFusion(HighResolutionModule):
    """timm's HRNet module with MMSegmentation's fusion: a coarser branch is upsampled bilinearly
    (``align_corners=False``, where timm's is nearest) and resized to the finer branch's size, so
    maps of any size fuse (an odd-sized branch upsampled by 2 is one row or column too many)."""

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(level) for branch, level in zip(self.branches, x)]
        fused = []
        for i, fuse in enumerate(self.fuse_layers):
            y = None
            for j, (layer, level) in enumerate(zip(fuse, x)):
                out = layer(level)
                if j > i and out.shape[-2:] != x[i].shape[-2:]:
                    out = F.interpolate(out, size=x[i].shape[-2:], mode="bilinear", align_corners=False)
                y = out if y is None else y + out
            fused.append(self.fuse_act(y))
        return fused


def _mmseg_hrnet(backbone: TimmBackbone) -> TimmBackbone:
    """``backbone``'s HRNet modules fused as MMSegmentation's (``_MMSegFusion``)."""
    for module in backbone.modules():
        if isinstance(module, HighResolutionModule):
            module.__class__ = _MMSegFusion
            for fuse in module.fuse_layers:
                for layer in fuse:
                    if isinstance(layer, nn.Sequential) and isinstance(layer[-1], nn.Upsample):
                        layer[-1] = nn.Upsample(scale_factor=layer[-1].scale_factor, mode="bilinear", align_corners=False)
    return backbone


@register_backbone("hrnetv2_w48")
def hrnetv2_w48(**kw) -> nn.Module:
    return _mmseg_hrnet(TimmBackbone("hrnet_w48", feature_location="", convert=_from_mmseg, **kw))


def _swin(variant: str):
    def build(**kw) -> nn.Module:
        return SwinTransformer(variant, **kw)
    return build


for _name in _SWIN:
    register_backbone(_name)(_swin(_name))


class MixTransformer(nn.Module):
    """SegFormer's hierarchical encoder (``transformers.SegformerModel``, random init): four
    NCHW maps at strides 4, 8, 16, 32; its LayerNorms' eps 1e-6, as MMSegmentation's
    ``MixVisionTransformer`` (equal maps and gradients, ``tests/peers``).

    ``checkpoint``: a ``transformers`` folder (``save_pretrained``: ``config.json`` and
    ``model.safetensors`` or ``pytorch_model.bin``, e.g. a copy of ``nvidia/mit-b0``) or a state
    dict file (of ``SegformerModel``, or of a Segformer classification or segmentation model, in
    the hub's or this version's names; or MMSegmentation's ``mit_b*.pth``, converted by
    ``_from_mmseg_mit``), read by ``transformers``' own ``from_pretrained`` (which
    maps the names), loaded whole or an ``InputError`` (``backbones.weights.check_complete``).
    ``pretrained=True`` downloads ``nvidia/mit-bN`` (ImageNet-1K) from the model hub."""

    def __init__(self, variant: str, pretrained: bool = False, checkpoint: str | None = None,
                 checkpoint_strict: bool = True) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerModel

        channels, depths = _MIT[variant]
        config = SegformerConfig(hidden_sizes=channels, depths=depths, num_attention_heads=[1, 2, 5, 8],
                                 sr_ratios=[8, 4, 2, 1], decoder_hidden_size=256 if variant == "mit_b0" else 768)
        self.weights: WeightsReport | None = None
        if checkpoint is not None:
            self.body, self.weights = _segformer_checkpoint(variant, Path(checkpoint), config, checkpoint_strict)
        else:
            self.body = _pretrained_segformer(variant, _MIT_HUB.format(variant[-1])) if pretrained else SegformerModel(config)
        if list(self.body.config.hidden_sizes) != channels or list(self.body.config.depths) != depths:
            raise InputError(f"backbone {variant!r}: the weights' model has widths {self.body.config.hidden_sizes}, "
                             f"depths {self.body.config.depths}; expected {channels}, {depths}")
        for module in self.body.modules():  # MMSegmentation's MixVisionTransformer: LN(eps=1e-6) throughout
            if isinstance(module, nn.LayerNorm):
                module.eps = _MIT_LAYER_NORM_EPS
        self.channels, self.strides = list(channels), [4, 8, 16, 32]

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(pixel_values=images, output_hidden_states=True).hidden_states)


def _pretrained_segformer(variant: str, source, where=None, **kwargs):
    """``SegformerModel.from_pretrained(source, **kwargs)``, quietly; an ``InputError`` naming
    ``where`` (default ``source``) when it cannot be read."""
    from transformers import SegformerModel
    from transformers.utils import logging as hf_logging

    where = where or source
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return SegformerModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"backbone {variant!r}: cannot load {where} here ({first_line(exc)}); "
                         "expected a transformers folder or Segformer state dict, or checkpoint=PATH to a local copy "
                         "(pretrained=True needs the model hub)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


_MMSEG_MIT = re.compile(r"^layers\.(\d+)\.(.*)$")  # MMSegmentation's MixVisionTransformer names
# MMSeg's names inside one stage -> the hub's (transformers' SegformerModel checkpoints), {j}: the block
_MMSEG_MIT_PARTS = (
    (r"0\.projection\.(weight|bias)", "patch_embeddings.{i}.proj.{0}"),
    (r"0\.norm\.(weight|bias)", "patch_embeddings.{i}.layer_norm.{0}"),
    (r"1\.(\d+)\.norm1\.(weight|bias)", "block.{i}.{0}.layer_norm_1.{1}"),
    (r"1\.(\d+)\.norm2\.(weight|bias)", "block.{i}.{0}.layer_norm_2.{1}"),
    (r"1\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)", "block.{i}.{0}.attention.output.dense.{1}"),
    (r"1\.(\d+)\.attn\.sr\.(weight|bias)", "block.{i}.{0}.attention.self.sr.{1}"),
    (r"1\.(\d+)\.attn\.norm\.(weight|bias)", "block.{i}.{0}.attention.self.layer_norm.{1}"),
    (r"1\.(\d+)\.ffn\.layers\.0\.(weight|bias)", "block.{i}.{0}.mlp.dense1.{1}"),
    (r"1\.(\d+)\.ffn\.layers\.1\.(weight|bias)", "block.{i}.{0}.mlp.dwconv.dwconv.{1}"),
    (r"1\.(\d+)\.ffn\.layers\.4\.(weight|bias)", "block.{i}.{0}.mlp.dense2.{1}"),
    (r"2\.(weight|bias)", "layer_norm.{i}.{0}"),
)


def _from_mmseg_mit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An MMSegmentation MiT state dict (``layers.<stage>.<0 patch embed | 1 blocks | 2 norm>``,
    bare or under ``backbone.``) under the hub's Segformer names: attention's packed
    ``in_proj`` split into query, key and value, 1x1-conv FFN weights as linear ones. Other
    tensors (a decode head's) are left out; a state dict of another layout is returned as it is."""
    encoder = _mmseg_encoder(state)
    if not any(_MMSEG_MIT.match(key) for key in encoder):
        return state
    converted = {}
    for key, value in encoder.items():
        found = _MMSEG_MIT.match(key)
        if found is None:
            continue
        stage, rest = found.groups()
        packed = re.fullmatch(r"1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", rest)
        if packed:
            block, kind = packed.groups()
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                converted[f"encoder.block.{stage}.{block}.attention.self.{part}.{kind}"] = chunk
            continue
        for pattern, target in _MMSEG_MIT_PARTS:
            part = re.fullmatch(pattern, rest)
            if part:
                tensor = value.flatten(1) if "mlp.dense" in target and value.dim() == 4 else value
                converted["encoder." + target.format(*part.groups(), i=stage)] = tensor
                break
        else:
            converted[key] = value  # reported unexpected
    return converted


def _segformer_checkpoint(variant: str, path: Path, config, strict: bool):
    """(encoder, ``WeightsReport``) from a ``transformers`` folder or a state dict file."""
    if path.is_dir():
        body, info = _pretrained_segformer(variant, str(path), local_files_only=True, output_loading_info=True,
                                           ignore_mismatched_sizes=True)
    else:
        state = _from_mmseg_mit(read_state_dict(path))
        body, info = _pretrained_segformer(variant, None, str(path), config=config, state_dict=state,
                                           output_loading_info=True, ignore_mismatched_sizes=True)
    if info.get("mismatched_keys"):  # (name, file shape, model shape)
        raise wrong_shapes_error(variant, str(path), list(info["mismatched_keys"]))
    missing = tuple(sorted(info["missing_keys"]))
    report = WeightsReport(str(path), len(body.state_dict()) - len(missing), missing, tuple(sorted(info["unexpected_keys"])))
    return body, check_complete(report, variant, strict)


def _mit(variant: str):
    def build(**kw) -> nn.Module:
        return MixTransformer(variant, **kw)
    return build


for _name in _MIT:
    register_backbone(_name)(_mit(_name))
