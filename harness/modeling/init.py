"""Initialisation of a ``Segmentor``'s decoder as MMSegmentation does it (``model.init: mmseg``)."""

from __future__ import annotations

from torch import nn

from harness.modeling.segmentor import Segmentor

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def mmseg_init(model: Segmentor) -> None:
    """MMSegmentation's initialisation of the decoder (``model.init: mmseg``): in the neck and the
    auxiliary head every conv Kaiming-normal (``fan_out``, ReLU) with zero bias and every norm
    weight 1, bias 0 (mmcv ``ConvModule.init_weights``); in all three, the modules a part names in
    ``CONV_SEG`` (MMSeg's final ``conv_seg``) N(0, 0.01) with zero bias (``BaseDecodeHead``'s
    ``init_cfg``). A classifier head's other parameters (prototypes, embeddings, attention) keep
    their authors' initialisation; the backbone keeps its weights."""
    for part in (model.neck, model.auxiliary):
        for module in part.modules() if part is not None else ():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, _NORMS) and module.weight is not None:
                nn.init.ones_(module.weight)
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for part in (model.neck, model.auxiliary, model.classifier):
        for name in getattr(part, "CONV_SEG", ()):
            conv = part.get_submodule(name)
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
