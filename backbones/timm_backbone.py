"""Encoders from timm: any model that supports ``features_only=True``."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from harness.errors import InputError

_MIN_STRIDE = 4


class TimmBackbone(nn.Module):
    """A timm feature extractor returning NCHW maps of stride >= 4.

    ``channels`` and ``strides`` come from timm's ``feature_info`` and describe
    the returned list, finest first. Models whose features timm emits as NHWC
    (Swin, some ViT-style hierarchies) are permuted to NCHW.
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        checkpoint: str | None = None,
        out_indices: tuple[int, ...] | None = None,
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
        if checkpoint is not None:
            self._load_checkpoint(Path(checkpoint))

    def _load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"backbone checkpoint {path} not found; expected a torch state_dict file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        missing, _ = self.body.load_state_dict(state, strict=False)
        if len(missing) == len(self.body.state_dict()):
            raise InputError(f"backbone checkpoint {path}: no key matches {self.name!r} (first keys: {list(state)[:3]})")

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.body(images)
        feats = [feats[i] for i in self._keep]
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return feats
