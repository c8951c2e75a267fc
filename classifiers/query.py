"""Parametric pixel-query (ProtoSeg, CVPR 2022, §2, Eq. 2), optionally Segmenter-style."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import ClassifierOutput, PixelClassifier
from classifiers.registry import register_classifier
from harness.errors import InputError

_MAX_LOGIT_SCALE = 100.0


@register_classifier("query")
class QueryClassifier(PixelClassifier):
    """p(c|i) = softmax_c(s * <e_c, i>) with <.,.> the inner product of l2-normalised
    vectors (Eq. 2) and E = [e_1..e_C] learnable class queries.

    Eq. 2 has no temperature; cosine logits in [-1, 1] cannot fit a softmax, so a
    learnable scale s = exp(log_scale) (initialised to ``init_scale``, capped at 100,
    as in CLIP) multiplies them.

    ``decoder_layers > 0`` adds Segmenter's mask transformer (Strudel et al. 2021,
    §3.2): pixel tokens and class queries are concatenated and pass jointly through
    pre-norm transformer layers (``num_heads``, MLP ratio ``mlp_ratio``) before the
    cosine, so queries exchange context across classes (ProtoSeg §2).
    Loss: ``ce``, cross-entropy with ``ignore_index`` (``loss_average`` as ``softmax``'s).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        decoder_layers: int = 0,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        init_scale: float = 10.0,
        loss_average: str = "labelled",
    ) -> None:
        super().__init__(num_classes, in_channels, ignore_index, loss_average)
        self.queries = nn.Parameter(torch.empty(num_classes, in_channels))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.decoder = None
        if decoder_layers > 0:
            if in_channels % num_heads:
                raise InputError(f"query: num_heads={num_heads} must divide the embedding width {in_channels}")
            layer = nn.TransformerEncoderLayer(
                in_channels, num_heads, int(in_channels * mlp_ratio), dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            self.decoder = nn.Sequential(
                nn.TransformerEncoder(layer, decoder_layers, enable_nested_tensor=False), nn.LayerNorm(in_channels)
            )

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        pixel = features.pixel
        batch, _, height, width = pixel.shape
        scale = self.log_scale.exp().clamp(max=_MAX_LOGIT_SCALE)
        if self.decoder is None:
            cosine = torch.einsum("bdhw,cd->bchw", F.normalize(pixel, dim=1), F.normalize(self.queries, dim=1))
        else:
            tokens = torch.cat([pixel.flatten(2).transpose(1, 2), self.queries.expand(batch, -1, -1)], dim=1)
            tokens = self.decoder(tokens)
            pixel_tokens, queries = tokens[:, : height * width], tokens[:, height * width :]
            cosine = torch.einsum("bnd,bcd->bcn", F.normalize(pixel_tokens, dim=-1), F.normalize(queries, dim=-1))
            cosine = cosine.reshape(batch, self.num_classes, height, width)
        logits = scale * cosine
        if targets is None:
            return ClassifierOutput(logits)
        return ClassifierOutput(logits, {"ce": self.cross_entropy(logits, targets)})
