"""ECENet: explicit class embeddings (Liu et al., "Explicit Class Extraction for Semantic
Segmentation", ICCV 2023, §3).

Pipeline over ``Features.pyramid`` (one map per backbone stage, finest first): Feature
Reconstruction per stage (Eq. 1-3) -> intermediate masks from the coarsest stage
(Eq. 4) -> Explicit Class Extraction, masks -> pyramid pooling -> linear -> class
embeddings G (Eq. 5) -> Semantics Attention & Updater on each finer stage, coarse
to fine (Eq. 6-10) -> aggregation (§3.5) -> CE + focal + dice + diversity (Eq. 11-12).

Presets (docs/architecture.md, "Fidelity"). No official PyTorch code exists; ``preset="code"``
(default) is the MindSpore port (``code-implementation1/Code1``, ``ECENet/
sdt_head_1236length_total.py``, ``utils_mmcv.py``, the Swin-B ADE20K config), which
reproduces the paper's Table 1 with the released checkpoint; ``preset="paper"`` is the
text. Each row is an option that overrides the preset:

====================== ============================= ======================================== ========================
setting                paper                         code                                     option
====================== ============================= ======================================== ========================
attention weights      softmax(S) (Eq. 7)            softmax(-S); +S kept as the masks        ``inverted_attention``
query projection       linear                        depthwise 3x3 + pointwise conv; K, V     ``query_projection``
                                                     one Linear(D, 2D) without bias
aggregation            ghost features + pixel        the same, then 3x3 conv 4D->D + BN +     ``aggregation``
                       shuffle, concat, 1x1 conv     ReLU, Dropout 0.1, 1x1 classifier
class probabilities    Linear on G, mixed over       Linear(D, N); class k's own              ``class_probabilities``
                       classes (DETR-style N+1)      probability times its own mask
Feature Reconstruction intrinsic + cheap + SE, 1x1   SE without sigmoid (reduction 2, no      ``reconstruction``
                       to unify channels             bias), 1x1 conv, LayerNorm; lateral 1x1
Eq. 4 first 1x1        1x1 (with bias)               grouped (num_heads groups), no bias      ``mask_learner``
gated updater          Eq. 9-10                      Eq. 9-10, then FC + LayerNorm + ReLU     ``updater_fc``
mask losses            "as in DETR": focal 1, dice 1 focal 5, dice 2                          ``focal_weight``,
                                                                                              ``dice_weight``
masks supervised       (not said: every stage's)     intermediate, stride 16, stride 8         ``supervised_masks``
CE average             (not said: the code's)        over all pixels, ignored ones counting 0 ``loss_average``
                                                     (MMSeg's ``CrossEntropyLoss`` of the
                                                     config's ``loss_decode``)
====================== ============================= ======================================== ========================

Both: L = int(alpha sqrt(N)) made odd (the text writes L ~ alpha sqrt(N)); bins
{1, 2, 3, 6, L}; C = 256, 4 heads, FFN ratio 4, one attention layer per stage at
strides 16, 8, 4; the diversity loss (Eq. 3) weighted 0.2 on every stage; ghost
upsampling of each coarser stage by 2 per step (GhostNet's primary 1x1 conv to
2D + cheap depthwise 3x3, each with BN + ReLU, then pixel shuffle), resized bilinearly
to the finest stage when strides do not double (``upsampling="bilinear"`` skips it).

Feature Reconstruction runs on whatever ``Features.pyramid`` holds: the code runs it on
the backbone's own stage maps, which the ``stages`` neck passes through unchanged (the
harness then fills ``stage_channels``); behind a D-wide neck (``mlp``, ``fpn``) it runs
on the neck's maps.

Choices where both are open:
- The paper's FR (``reconstruction="paper"``): intrinsic = 1x1 conv + BN to half width
  (Eq. 1), cheap = depthwise 3x3 conv + BN, SE with sigmoid, reduction 4 (Eq. 2),
  concat and 1x1 conv + BN + ReLU to D (the channel-unifying 1x1).
- Attention masks: the similarity S(Q, K) averaged over heads (the code's).
- L_mask = focal (alpha 0.25, gamma 2, mean over labelled pixels) + dice (smoothing 1),
  each per (image, class) mask and averaged over the masks as DETR's code does, on the
  summed supervised masks against one-hot labels at the finest stage's resolution; the
  port ships no loss code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import (
    LOSS_AVERAGES,
    ChannelLayerNorm,
    ClassifierOutput,
    PixelClassifier,
    check_choice,
    full_precision,
    upsample,
)
from classifiers.registry import register_classifier
from harness.errors import InputError

_BASE_BINS = (1, 2, 3, 6)
_GHOST_STEP = 2  # each ghost upsampling step doubles the resolution (pixel shuffle by 2)


def pooling_sizes(num_classes: int, alpha: float) -> tuple[int, ...]:
    """Bin sides {1, 2, 3, 6, L}, L = int(alpha * sqrt(N)) made odd (the code's
    ``TokenEmbedding_noCoord_seg``), sorted, unique."""
    largest = int(alpha * math.sqrt(num_classes))
    largest += 1 - largest % 2
    return tuple(sorted(set(_BASE_BINS) | {largest}))


def diversity_loss(diverse: Tensor) -> Tensor:
    """Eq. 3: 1 - (1/C) sum over positions of the max over channels of the per-channel
    spatial softmax, averaged over the batch. diverse: [B, C, H, W]."""
    spatial = diverse.flatten(2).softmax(dim=-1)
    return (1 - spatial.amax(dim=1).sum(dim=-1) / diverse.shape[1]).mean()


def _conv_bn_relu(cin: int, cout: int, kernel: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureReconstruction(nn.Module):
    """Eq. 1-2 on a ``channels``-wide stage map: intrinsic Y' (1x1 conv + BN to half width),
    diverse Y'' = SE(Cheap(Y')) (depthwise 3x3 + BN), concat, then D wide.

    ``paper``: SE with sigmoid (reduction 4), concat -> 1x1 conv + BN + ReLU to D.
    ``code`` (``AdaptiveFeatureSelector_1_layers`` + norm + lateral): SE without sigmoid
    (reduction 2, no bias), concat -> 1x1 conv (no bias) -> LayerNorm -> 1x1 conv to D.
    Returns (the map, Y'' for the diversity loss)."""

    def __init__(self, channels: int, dim: int, style: str) -> None:
        super().__init__()
        half = channels // 2
        self.style = style
        self.intrinsic = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half))
        self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half, bias=style == "code"),
                                   nn.BatchNorm2d(half))
        if style == "code":
            self.excite = nn.Sequential(nn.Linear(half, half // 2, bias=False), nn.ReLU(inplace=True),
                                        nn.Linear(half // 2, half, bias=False))
            self.project = nn.Sequential(nn.Conv2d(2 * half, channels, 1, bias=False), ChannelLayerNorm(channels),
                                         nn.Conv2d(channels, dim, 1, bias=False))
        else:
            hidden = max(half // 4, 8)
            self.excite = nn.Sequential(nn.Linear(half, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, half),
                                        nn.Sigmoid())
            self.project = _conv_bn_relu(2 * half, dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        intrinsic = self.intrinsic(x)
        cheap = self.cheap(intrinsic)
        diverse = cheap * self.excite(cheap.mean((2, 3)))[:, :, None, None]
        first = (diverse, intrinsic) if self.style == "code" else (intrinsic, diverse)
        return self.project(torch.cat(first, dim=1)), diverse


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

    ``separable`` query projection (code): depthwise 3x3 + pointwise conv on the map, K and V
    from one bias-free Linear(D, 2D); ``linear`` (paper): three Linear layers.
    Returns the enhanced pixel map and the similarity S(Q, K) reshaped as masks [B, N, H, W]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, inverted: bool, query_projection: str) -> None:
        super().__init__()
        self.num_heads, self.inverted = num_heads, inverted
        self.norm_pixels, self.norm_classes, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        if query_projection == "separable":
            self.query = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1))
            self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        else:
            self.query, self.key_value = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, h, T, d]

    def forward(self, pixels: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        batch, dim, height, width = pixels.shape
        tokens = pixels.flatten(2).transpose(1, 2)  # [B, L, D]
        normed = self.norm_pixels(tokens)
        if isinstance(self.query, nn.Linear):
            query = self.query(normed)
        else:
            query = self.query(normed.transpose(1, 2).reshape(batch, dim, height, width)).flatten(2).transpose(1, 2)
        k, v = self._heads(self.key_value(self.norm_classes(classes))).chunk(2, dim=-1)
        q = self._heads(query)
        similarity = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, h, L, N]
        attention = (-similarity if self.inverted else similarity).softmax(dim=-1)
        tokens = tokens + self.out((attention @ v).transpose(1, 2).reshape(batch, -1, dim))
        hidden = self.fc1(self.norm_mlp(tokens)).transpose(1, 2).reshape(batch, -1, height, width)
        tokens = tokens + self.fc2(F.gelu(self.dwconv(hidden)).flatten(2).transpose(1, 2))
        masks = similarity.mean(dim=1).transpose(1, 2).reshape(batch, -1, height, width)
        return tokens.transpose(1, 2).reshape(batch, dim, height, width), masks


class ClassUpdater(nn.Module):
    """Eq. 9-10 (``gated``): G <- sigmoid(psi_1(phi_3(G^) * phi_4(G))) * psi_2(G^) + G; ``plus``:
    G + psi_2(G^). ``fc`` (code, K-Net's kernel updator): then FC + LayerNorm + ReLU."""

    def __init__(self, dim: int, gated: bool, fc: bool) -> None:
        super().__init__()
        self.psi2 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.gated = gated
        if gated:
            self.phi3, self.phi4 = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.psi1 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True)) if fc else None

    def forward(self, new: Tensor, previous: Tensor) -> Tensor:
        update = self.psi2(new)
        if self.gated:
            update = torch.sigmoid(self.psi1(self.phi3(new) * self.phi4(previous))) * update
        updated = update + previous
        return updated if self.fc is None else self.fc(updated)


class GhostUpsample(nn.Module):
    """``steps`` x 2 upsampling of a D-wide map: per step GhostNet's primary 1x1 conv to 2D and
    cheap depthwise 3x3 conv (each + BN + ReLU), concat to 4D, pixel shuffle by 2 back to D."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        wide = dim * _GHOST_STEP * _GHOST_STEP // 2
        self.steps = nn.ModuleList(nn.ModuleDict({"primary": _conv_bn_relu(dim, wide, 1),
                                                  "cheap": _conv_bn_relu(wide, wide, 3, groups=wide)})
                                   for _ in range(steps))

    def forward(self, x: Tensor) -> Tensor:
        for step in self.steps:
            primary = step["primary"](x)
            x = F.pixel_shuffle(torch.cat([primary, step["cheap"](primary)], dim=1), _GHOST_STEP)
        return x


def _focal_and_dice(masks: Tensor, onehot: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sigmoid focal loss (mean over labelled pixels) and dice of each (image, class) mask of
    ``masks`` against ``onehot`` (zero at ignore pixels), both averaged over the masks, as DETR's."""
    prob = masks.sigmoid()
    ce = F.binary_cross_entropy_with_logits(masks, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    focal = ((alpha_t * (1 - p_t) ** 2 * ce * valid).sum((2, 3)) / valid.sum((2, 3)).clamp(min=1)).mean()
    prob = prob * valid
    dice = 1 - (2 * (prob * onehot).sum((2, 3)) + 1) / (prob.sum((2, 3)) + onehot.sum((2, 3)) + 1)
    return focal, dice.mean()


@register_classifier("ece")
class ECEClassifier(PixelClassifier):
    """ECENet head. Losses: ``ce`` (L_cls), ``focal`` and ``dice`` (L_mask, Eq. 12,
    weights ``focal_weight``/``dice_weight``) and ``div`` (``div_weight`` x L_div, Eq. 3).

    Options: ``preset`` code|paper and the options of its table (module docstring);
    ``num_heads`` (4), ``alpha`` (pooling ratio: 1 ADE20K, sqrt(2) PASCAL-Context, 3
    Cityscapes), ``updater`` gated|plus (Table 6), ``mlp_ratio`` of the Mix-FFN (4),
    ``upsampling`` ghost|bilinear, ``num_stages``; ``stage_channels``: the pyramid's widths
    (the harness fills it from the neck; default: every stage ``in_channels`` wide).
    """

    PRESETS = {
        "code": {"inverted_attention": True, "query_projection": "separable", "aggregation": "conv3x3",
                 "class_probabilities": "own", "reconstruction": "code", "mask_learner": "grouped",
                 "updater_fc": True, "focal_weight": 5.0, "dice_weight": 2.0, "supervised_masks": "coarse",
                 "loss_average": "all"},
        "paper": {"inverted_attention": False, "query_projection": "linear", "aggregation": "conv1x1",
                  "class_probabilities": "mixed", "reconstruction": "paper", "mask_learner": "dense",
                  "updater_fc": False, "focal_weight": 1.0, "dice_weight": 1.0, "supervised_masks": "all",
                  "loss_average": "all"},
    }
    PRESET_CHOICES = {"query_projection": ("separable", "linear"), "aggregation": ("conv3x3", "conv1x1"),
                      "class_probabilities": ("own", "mixed"), "reconstruction": ("code", "paper"),
                      "mask_learner": ("grouped", "dense"), "supervised_masks": ("coarse", "all"),
                      "loss_average": LOSS_AVERAGES}

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        preset: str = "code",
        num_heads: int = 4,
        alpha: float = 1.0,
        updater: str = "gated",
        mlp_ratio: float = 4.0,
        div_weight: float = 0.2,
        upsampling: str = "ghost",
        num_stages: int = 4,
        stage_channels: list[int] | None = None,
        inverted_attention: bool | None = None,
        query_projection: str | None = None,
        aggregation: str | None = None,
        class_probabilities: str | None = None,
        reconstruction: str | None = None,
        mask_learner: str | None = None,
        updater_fc: bool | None = None,
        focal_weight: float | None = None,
        dice_weight: float | None = None,
        supervised_masks: str | None = None,
        loss_average: str | None = None,
    ) -> None:
        o = self.preset_options("ece", locals())
        super().__init__(num_classes, in_channels, ignore_index, o["loss_average"])
        check_choice("ece", "updater", updater, ("gated", "plus"))
        check_choice("ece", "upsampling", upsampling, ("ghost", "bilinear"))
        dim = in_channels
        if dim % num_heads or dim % 2:
            raise InputError(f"ece: the embedding width {dim} must be even and divisible by num_heads={num_heads}")
        stage_channels = list(stage_channels or [dim] * num_stages)
        if len(stage_channels) != num_stages:
            raise InputError(f"ece: stage_channels={stage_channels} has {len(stage_channels)} stages; "
                             f"expected num_stages={num_stages}")
        self.preset, self.options = o["preset"], o
        self.div_weight = div_weight
        self.reconstruct = nn.ModuleList(FeatureReconstruction(c, dim, o["reconstruction"]) for c in stage_channels)
        groups = num_heads if o["mask_learner"] == "grouped" else 1
        bias = o["mask_learner"] == "dense"
        self.intermediate_masks = nn.Sequential(nn.Conv2d(dim, dim, 1, groups=groups, bias=bias),
                                                nn.Conv2d(dim, num_classes, 1, bias=bias))  # Eq. 4
        self.extract = nn.ModuleList(ClassExtraction(num_classes, dim, alpha) for _ in range(num_stages))
        self.attend = nn.ModuleList(SemanticsAttention(dim, num_heads, mlp_ratio, o["inverted_attention"],
                                                       o["query_projection"]) for _ in range(num_stages - 1))
        self.update = nn.ModuleList(ClassUpdater(dim, updater == "gated", o["updater_fc"]) for _ in range(num_stages - 1))
        self.upsample = nn.ModuleList(GhostUpsample(dim, i) for i in range(1, num_stages)) if upsampling == "ghost" else None
        if o["aggregation"] == "conv3x3":
            self.fuse = nn.Sequential(_conv_bn_relu(num_stages * dim, dim, 3), nn.Dropout2d(0.1),
                                      nn.Conv2d(dim, num_classes, 1))
        else:
            self.fuse = nn.Conv2d(num_stages * dim, num_classes, 1)
        own = o["class_probabilities"] == "own"
        self.class_logits = nn.Linear(dim, num_classes if own else num_classes + 1)

    def _decode(self, features: Features) -> tuple[Tensor, Tensor, list[Tensor], Tensor, list[Tensor]]:
        """The inference path: (logits, class embeddings [B, N, D], the masks coarse to fine at the
        finest stage's size, their sum, the reconstruction's diverse parts)."""
        if len(features.pyramid) != len(self.reconstruct):
            raise InputError(f"ece: built for {len(self.reconstruct)} stages, got a pyramid of {len(features.pyramid)}; "
                             "set classifier_kwargs.num_stages")
        stages, diverse = (list(x) for x in zip(*(fr(x) for fr, x in zip(self.reconstruct, features.pyramid))))
        size = stages[0].shape[-2:]
        with full_precision(stages[0]):  # class embeddings, attention and masks in float32
            stages = [x.float() for x in stages]
            masks = [self.intermediate_masks(stages[-1])]  # coarse to fine
            classes = self.extract[-1](masks[0])
            for i in range(len(stages) - 2, -1, -1):
                stages[i], mask = self.attend[i](stages[i], classes)
                classes = self.update[i](self.extract[i](mask), classes)
                masks.append(mask)
        if self.upsample is not None:
            stages[1:] = [up(x) for up, x in zip(self.upsample, stages[1:])]
        fused = self.fuse(torch.cat([upsample(x, size) for x in stages], dim=1))
        with full_precision(fused):
            masks = [upsample(m, size) for m in masks]
            summed = torch.stack(masks).sum(0)
            logits = fused.float() + self._class_masks(classes, summed)
        return logits, classes, masks, summed, diverse

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        logits, _, masks, summed, diverse = self._decode(features)
        if targets is None:
            return ClassifierOutput(logits)
        with full_precision(logits):
            supervised = summed if self.options["supervised_masks"] == "all" else torch.stack(masks[:-1]).sum(0)
            focal, dice = _focal_and_dice(supervised, *self.one_hot(self.labels_at(targets, logits.shape[-2:]),
                                                                    summed.dtype))
            div = torch.stack([diversity_loss(d.float()) for d in diverse]).mean()
            return ClassifierOutput(logits, {
                "ce": self.cross_entropy(logits, targets), "focal": self.options["focal_weight"] * focal,
                "dice": self.options["dice_weight"] * dice, "div": self.div_weight * div,
            })

    def diagnostics(self, features: Features, targets: Tensor) -> dict[str, Tensor]:
        """How distinct the explicit class embeddings are: ``class_embedding_cosine`` [N, N], the
        cosine between classes' final embeddings (mean over the batch), and its off-diagonal mean,
        ``mean_class_embedding_cosine`` (1: every class the same embedding)."""
        classes = F.normalize(self._decode(features)[1], dim=-1)
        cosine = (classes @ classes.transpose(1, 2)).mean(0)
        n = cosine.shape[0]
        return {"class_embedding_cosine": cosine,
                "mean_class_embedding_cosine": (cosine.sum() - cosine.diagonal().sum()) / max(n * (n - 1), 1)}

    def _class_masks(self, classes: Tensor, summed: Tensor) -> Tensor:
        """Class probabilities times the sigmoid of the summed masks: ``own`` (code) takes class
        k's probability for itself, p[b, k, k]; ``mixed`` sums p[b, q, c] over the N queries
        (the extra, last slot is "no class")."""
        probabilities = self.class_logits(classes).softmax(dim=-1)  # [B, N, N or N+1]
        if self.options["class_probabilities"] == "own":
            return probabilities.diagonal(dim1=1, dim2=2)[:, :, None, None] * summed.sigmoid()
        return torch.einsum("bqc,bqhw->bchw", probabilities[..., : self.num_classes], summed.sigmoid())
