"""Encoders from timm: any model that supports ``features_only=True``."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from harness.errors import InputError

_MIN_STRIDE = 4


def load_checkpoint(body: nn.Module, path: Path, name: str) -> None:
    """Load a state dict (``weights_only``; under ``state_dict``/``model`` or bare) into an
    encoder's ``body``; ``InputError`` if the file is missing or no key matches."""
    if not path.is_file():
        raise InputError(f"backbone checkpoint {path} not found; expected a torch state_dict file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state))
    missing, _ = body.load_state_dict(state, strict=False)
    if len(missing) == len(body.state_dict()):
        raise InputError(f"backbone checkpoint {path}: no key matches {name!r} (first keys: {list(state)[:3]})")


class TimmBackbone(nn.Module):
    """A timm feature extractor returning NCHW maps of stride >= 4.

    ``channels`` and ``strides`` come from timm's ``feature_info`` and describe
    the returned list, finest first. Models whose features timm emits as NHWC
    (Swin, some ViT-style hierarchies) are permuted to NCHW. ``input_multiple`` > 1 pads
    the input's bottom and right edges to a multiple of it (Swin's patch merging needs
    even sizes) and crops each map back to ceil(size / stride), so the maps stay aligned
    with the unpadded image.
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        checkpoint: str | None = None,
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
        if checkpoint is not None:
            load_checkpoint(self.body, Path(checkpoint), name)

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
