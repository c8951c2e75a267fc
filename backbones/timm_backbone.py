"""Encoders from timm: any model that supports ``features_only=True``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from backbones.weights import (
    WeightsReport,
    is_own_layout,
    load_state_dict_whole,
    read_state_dict,
    timm_state_for_features,
)
from harness.errors import InputError

_MIN_STRIDE = 4
_FEATURES_ONLY_KWARGS = ("out_indices", "feature_location", "feature_cls", "flatten_sequential")


class TimmBackbone(nn.Module):
    """A timm feature extractor returning NCHW maps of stride >= 4.

    ``channels`` and ``strides`` come from timm's ``feature_info`` and describe
    the returned list, finest first. Models whose features timm emits as NHWC
    (Swin, some ViT-style hierarchies) are permuted to NCHW. ``input_multiple`` > 1 pads
    the input's bottom and right edges to a multiple of it (Swin's patch merging needs
    even sizes) and crops each map back to ceil(size / stride), so the maps stay aligned
    with the unpadded image.

    Initial weights: ``pretrained=True`` (timm's, downloaded) or ``checkpoint=PATH``, loaded
    whole or an ``InputError`` (``backbones.weights``; ``checkpoint_strict=False`` lets tensors
    stay missing; ``convert`` renames another library's file first); ``weights`` reports what loaded.
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        checkpoint: str | None = None,
        checkpoint_strict: bool = True,
        convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        out_indices: tuple[int, ...] | None = None,
        input_multiple: int = 1,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if out_indices is not None:
            timm_kwargs["out_indices"] = tuple(out_indices)
        self.body = timm.create_model(name, pretrained=pretrained, features_only=True, **timm_kwargs)
        info = self.body.feature_info
        strides, channels = info.reduction(), info.channels()
        if out_indices is None:
            keep = [i for i, s in enumerate(strides) if s >= _MIN_STRIDE]
        else:
            keep = list(range(len(strides)))
        if not keep:
            raise InputError(f"backbone {name!r}: no feature map with stride >= {_MIN_STRIDE} (strides {strides})")
        self.name = name
        self._keep = keep
        self.strides = [strides[i] for i in keep]
        self.channels = [channels[i] for i in keep]
        self._nhwc = getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        self._multiple = input_multiple
        self.weights: WeightsReport | None = None
        if checkpoint is not None:
            state = read_state_dict(Path(checkpoint))
            state = convert(state) if convert is not None else state
            if not is_own_layout(self.body, state):
                create_kwargs = {k: v for k, v in timm_kwargs.items() if k not in _FEATURES_ONLY_KWARGS}
                state = timm_state_for_features(name, state, create_kwargs, self.body)
            self.weights = load_state_dict_whole(self.body, state, checkpoint, name, checkpoint_strict)

    def forward(self, images: Tensor) -> list[Tensor]:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self._multiple, -width % self._multiple
        if pad_h or pad_w:
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h))
        feats = self.body(images)
        feats = [feats[i] for i in self._keep]
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        if pad_h or pad_w:
            feats = [f[..., : -(-height // s), : -(-width // s)] for f, s in zip(feats, self.strides)]
        return feats
