"""ECENet: explicit class embeddings (Liu et al., "Explicit Class Extraction for Semantic
Segmentation", ICCV 2023, §3).

Pipeline over ``Features.pyramid`` (all stages, already D wide): Feature
Reconstruction per stage (Eq. 1-3) -> intermediate masks from the coarsest stage
(Eq. 4) -> Explicit Class Extraction, masks -> pyramid pooling -> linear -> class
embeddings G (Eq. 5) -> Semantics Attention & Updater on each finer stage, coarse
to fine (Eq. 6-10) -> aggregation (§3.5) -> CE + focal + dice + diversity (Eq. 11-12).

Choices where the paper is open:
- FR works on the neck's D-wide maps: intrinsic = 1x1 conv + BN to D/2 (Eq. 1);
  "cheap" op = GhostNet's depthwise 3x3 conv + BN; SE with reduction 4 (Eq. 2);
  concat and 1x1 conv + BN + ReLU back to D, which also serves as the paper's
  channel-unifying 1x1 conv.
- Pooling: adaptive average pooling with bin sides {1, 2, 3, 6, L}, L = the
  smallest odd integer >= alpha * sqrt(N) (N=150, alpha=1 gives 13, like the public
  port); duplicate sides are dropped. One pooling-to-embedding linear per stage.
- Attention masks: the similarity S(Q, K) averaged over heads; ``inverted_attention``
  reproduces the public port's softmax(-S).
- Updater: psi_1, psi_2 are Linear + LayerNorm (Eq. 10); ``updater="plus"`` is
  Table 6's plain G + psi_2(G_hat).
- Aggregation: stages are upsampled bilinearly to the finest stage (instead of
  ghost features + pixel shuffle), concatenated, 1x1 conv to N logits; class
  probabilities are Linear(D, N+1) + softmax on the final G (the extra slot is
  "no class", as in DETR/SegViT), multiplied with the sigmoid of the summed masks
  (the ECE masks of every stage upsampled to the finest stage) and added.
- L_cls is the pixel CE on the final prediction; L_mask = focal (alpha 0.25,
  gamma 2, summed over classes, mean over labelled pixels) + dice (per image and
  class, smoothing 1) on the summed masks against one-hot labels; weights 1 and 1
  as in DETR's code; L_div (Eq. 3) averaged over stages, weight 0.2 (Table 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import ClassifierOutput, PixelClassifier, check_choice
from classifiers.registry import register_classifier
from harness.errors import InputError

_BASE_BINS = (1, 2, 3, 6)


def pooling_sizes(num_classes: int, alpha: float) -> tuple[int, ...]:
    """Bin sides {1, 2, 3, 6, L}, L the smallest odd integer >= alpha * sqrt(N), sorted, unique."""
    largest = math.ceil(alpha * math.sqrt(num_classes) - 1e-9)
    largest += 1 - largest % 2
    return tuple(sorted(set(_BASE_BINS) | {largest}))


def diversity_loss(diverse: Tensor) -> Tensor:
    """Eq. 3: 1 - (1/C) sum over positions of the max over channels of the per-channel
    spatial softmax, averaged over the batch. diverse: [B, C, H, W]."""
    spatial = diverse.flatten(2).softmax(dim=-1)
    return (1 - spatial.amax(dim=1).sum(dim=-1) / diverse.shape[1]).mean()


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class FeatureReconstruction(nn.Module):
    """Eq. 1-2: intrinsic branch Y', diverse branch Y'' = SE(Cheap(Y')), concat, project to D."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.intrinsic = nn.Sequential(nn.Conv2d(dim, half, 1, bias=False), nn.BatchNorm2d(half))
        self.diverse = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
                                     nn.BatchNorm2d(half), _SqueezeExcite(half))
        self.project = nn.Sequential(nn.Conv2d(2 * half, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        intrinsic = self.intrinsic(x)
        diverse = self.diverse(intrinsic)
        return self.project(torch.cat([intrinsic, diverse], dim=1)), diverse


class ClassExtraction(nn.Module):
    """Eq. 5 without the masks: pyramid pooling of each class's mask, then a linear map to D."""

    def __init__(self, num_classes: int, dim: int, alpha: float) -> None:
        super().__init__()
        self.sizes = pooling_sizes(num_classes, alpha)
        self.embed = nn.Linear(sum(s * s for s in self.sizes), dim)

    def forward(self, masks: Tensor) -> Tensor:
        pooled = torch.cat([F.adaptive_avg_pool2d(masks, s).flatten(2) for s in self.sizes], dim=-1)
        return self.embed(pooled)  # [B, N, D]


class SemanticsAttention(nn.Module):
    """Eq. 6-7 plus the Mix-FFN block: pixels query the class embeddings.

    Returns the enhanced pixel map and the similarity S(Q, K) reshaped as masks [B, N, H, W]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, inverted: bool) -> None:
        super().__init__()
        self.num_heads, self.inverted = num_heads, inverted
        self.norm_pixels, self.norm_classes, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, h, T, d]

    def forward(self, pixels: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        batch, dim, height, width = pixels.shape
        tokens = pixels.flatten(2).transpose(1, 2)  # [B, L, D]
        normed = self.norm_classes(classes)
        q = self._heads(self.query(self.norm_pixels(tokens)))
        k, v = self._heads(self.key(normed)), self._heads(self.value(normed))
        similarity = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, h, L, N]
        attention = (-similarity if self.inverted else similarity).softmax(dim=-1)
        tokens = tokens + self.out((attention @ v).transpose(1, 2).reshape(batch, -1, dim))
        hidden = self.fc1(self.norm_mlp(tokens)).transpose(1, 2).reshape(batch, -1, height, width)
        tokens = tokens + self.fc2(F.gelu(self.dwconv(hidden)).flatten(2).transpose(1, 2))
        masks = similarity.mean(dim=1).transpose(1, 2).reshape(batch, -1, height, width)
        return tokens.transpose(1, 2).reshape(batch, dim, height, width), masks


class ClassUpdater(nn.Module):
    """Eq. 9-10 (``gated``): G <- sigmoid(psi_1(phi_3(G^) * phi_4(G))) * psi_2(G^) + G; ``plus``: G + psi_2(G^)."""

    def __init__(self, dim: int, gated: bool) -> None:
        super().__init__()
        self.psi2 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.gated = gated
        if gated:
            self.phi3, self.phi4 = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.psi1 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(self, new: Tensor, previous: Tensor) -> Tensor:
        update = self.psi2(new)
        if self.gated:
            update = torch.sigmoid(self.psi1(self.phi3(new) * self.phi4(previous))) * update
        return update + previous


def _focal_and_dice(masks: Tensor, onehot: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sigmoid focal loss and per-image, per-class dice of ``masks`` against ``onehot`` (zero at ignore pixels)."""
    prob = masks.sigmoid()
    ce = F.binary_cross_entropy_with_logits(masks, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    focal = (alpha_t * (1 - p_t) ** 2 * ce * valid).sum() / valid.sum().clamp(min=1)
    prob = prob * valid
    dice = 1 - (2 * (prob * onehot).sum((2, 3)) + 1) / (prob.sum((2, 3)) + onehot.sum((2, 3)) + 1)
    return focal, dice.mean()


@register_classifier("ece")
class ECEClassifier(PixelClassifier):
    """ECENet head. Losses: ``ce`` (L_cls), ``focal`` and ``dice`` (L_mask, Eq. 12,
    weights ``focal_weight``/``dice_weight``) and ``div`` (``div_weight`` x L_div, Eq. 3).

    Options: ``num_heads`` (4), ``alpha`` (pooling ratio: 1 ADE20K, sqrt(2) PASCAL-Context,
    3 Cityscapes), ``updater`` gated|plus (Table 6), ``inverted_attention`` (public port),
    ``mlp_ratio`` of the Mix-FFN (4).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        num_heads: int = 4,
        alpha: float = 1.0,
        updater: str = "gated",
        inverted_attention: bool = False,
        mlp_ratio: float = 4.0,
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        div_weight: float = 0.2,
        num_stages: int = 4,
    ) -> None:
        super().__init__(num_classes, in_channels, ignore_index)
        check_choice("ece", "updater", updater, ("gated", "plus"))
        if in_channels % num_heads or in_channels % 2:
            raise InputError(f"ece: the embedding width {in_channels} must be even and divisible by num_heads={num_heads}")
        dim = in_channels
        self.focal_weight, self.dice_weight, self.div_weight = focal_weight, dice_weight, div_weight
        self.reconstruct = nn.ModuleList(FeatureReconstruction(dim) for _ in range(num_stages))
        self.intermediate_masks = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, num_classes, 1))  # Eq. 4
        self.extract = nn.ModuleList(ClassExtraction(num_classes, dim, alpha) for _ in range(num_stages))
        self.attend = nn.ModuleList(SemanticsAttention(dim, num_heads, mlp_ratio, inverted_attention)
                                    for _ in range(num_stages - 1))
        self.update = nn.ModuleList(ClassUpdater(dim, updater == "gated") for _ in range(num_stages - 1))
        self.fuse = nn.Conv2d(num_stages * dim, num_classes, 1)
        self.class_logits = nn.Linear(dim, num_classes + 1)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        if len(features.pyramid) != len(self.reconstruct):
            raise InputError(f"ece: built for {len(self.reconstruct)} stages, got a pyramid of {len(features.pyramid)}; "
                             "set classifier_kwargs.num_stages")
        stages, diverse = zip(*(fr(x) for fr, x in zip(self.reconstruct, features.pyramid)))
        stages = list(stages)
        size = stages[0].shape[-2:]
        masks = self.intermediate_masks(stages[-1])
        classes = self.extract[-1](masks)
        summed = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        for i in range(len(stages) - 2, -1, -1):  # coarse to fine
            stages[i], masks = self.attend[i](stages[i], classes)
            classes = self.update[i](self.extract[i](masks), classes)
            summed = summed + F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        fused = torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in stages], dim=1)
        probabilities = self.class_logits(classes).softmax(dim=-1)[..., : self.num_classes]  # [B, N, N]
        logits = self.fuse(fused) + torch.einsum("bqc,bqhw->bchw", probabilities, summed.sigmoid())
        if targets is None:
            return ClassifierOutput(logits)
        focal, dice = _focal_and_dice(summed, *self.one_hot(self.labels_at(targets, size), summed.dtype))
        div = torch.stack([diversity_loss(d) for d in diverse]).mean()
        return ClassifierOutput(logits, {
            "ce": self.cross_entropy(logits, targets), "focal": self.focal_weight * focal,
            "dice": self.dice_weight * dice, "div": self.div_weight * div,
        })
