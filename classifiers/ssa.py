"""SSA: semantic and spatial adaptive classifier (Ma et al., ECCV 2024, §3).

Inference (Eq. 1, 2, 4-7): coarse mask M_c = S_f S^T + b (a 1x1 conv whose weights
are the fixed prototypes S); semantic centres S_c = Softmax_K(M_c) S_f and spatial
centres P_c = Softmax_HW(M_c) P_f with P_f = PE(S_f); adapted prototypes
S_p = phi_s([S_c, S]), P_p = phi_p([P_c, P]); output O = (S_f + P_f)(S_p + P_p)^T.
Training adds a ground-truth-guided teacher (training only) and Eq. 3's objective.

Choices where the paper is open:
- Eq. 4 is normalised by each class's soft mass, so S_c is the average feature the
  text describes (the printed product alone would be a sum).
- CPVT encoding: P_f = depthwise 3x3 conv of S_f (the PEG term; S_f + P_f in Eq. 2
  is then CPVT's PEG output). ``sinusoidal``: fixed 2-D sin/cos of (y, x);
  ``learnable``: a learned 16x16 grid resized to H x W (Table 7's variants).
- phi_s, phi_p are Linear(2D, D) (a 1x1 conv over the K prototypes).
- Teacher: its own phi_s, phi_p (the training-only modules), sharing S, P and PE.
  M_g is the one-hot ground truth at the head's resolution (ignore pixels weigh
  nothing); its semantic centres are averaged over the whole batch (the note after
  Eq. 15), its spatial centres per image. Teacher outputs enter the distillation
  terms detached: they are soft labels; the teacher learns from L_g only.
- The student's CE is computed at label resolution, like every head. Dice, the
  teacher's CE and dice, and L_rd use the head's resolution with labels sampled
  nearest (``loss_resolution="head"``, 16x fewer elements at stride 4: 1.2x the
  softmax training step instead of 3.7x at 512x512 with 150 classes) or upsampled
  logits at label resolution (``"label"``, as MMSegmentation heads do; better on
  small images). The boundary B is found on the full-resolution labels: every
  pixel whose (2*(edge_size//2)+1)-wide neighbourhood holds another label
  (max-pool != min-pool, in torch), max-pooled to the head's cells for ``"head"``. The printed -1/(2K) sign of
  Eq. 10-11 is taken as a typo (the loss is a cross-entropy, >= 0) and the average
  runs over the (class, boundary/interior) terms with a non-empty mask.
- L_pd (Eq. 16) is implemented as printed: sum_j softmax(P_p)_j * -log softmax(P-hat_p)_j.
- Dice (L_c, L_g): per class over the batch on softmax probabilities, smoothing 1.
- ``logit="cosine"`` reproduces the public code: 15 x cosine after an extra 1x1
  projection of the pixel features. ``loss_weights="code"``: lambda_r, lambda_s,
  lambda_p = 1, 10, 0.4 instead of the paper's 1, 1, 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import ClassifierOutput, PixelClassifier, check_choice
from classifiers.registry import register_classifier

_LOSS_WEIGHTS = {"paper": (1.0, 1.0, 1.0), "code": (1.0, 10.0, 0.4)}
_COSINE_SCALE = 15.0
_LEARNED_GRID = 16


def boundary_mask(labels: Tensor, edge_size: int, ignore_index: int) -> Tensor:
    """[B, H, W] bool: pixels within ``edge_size // 2`` (Chebyshev) of a different label.

    Ignore pixels count as a label of their own when finding edges but are never
    boundary pixels themselves."""
    radius = edge_size // 2
    values = labels[:, None].float()
    high = F.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius)
    low = -F.max_pool2d(-values, 2 * radius + 1, stride=1, padding=radius)
    return ((high != low)[:, 0]) & (labels != ignore_index)


def _sinusoidal(dim: int, height: int, width: int, device, dtype) -> Tensor:
    """Fixed 2-D encoding [D, H, W]: D/2 channels for y, D/2 for x, sin/cos pairs."""
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq  # [H, q]
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq  # [W, q]
    y_enc = torch.cat([ys.sin(), ys.cos()], dim=1).t()[:, :, None].expand(-1, height, width)
    x_enc = torch.cat([xs.sin(), xs.cos()], dim=1).t()[:, None, :].expand(-1, height, width)
    enc = torch.cat([y_enc, x_enc], dim=0)
    return F.pad(enc, (0, 0, 0, 0, 0, dim - enc.shape[0])).to(dtype)


class _PositionEncoding(nn.Module):
    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "cpvt":
            self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        elif kind == "learnable":
            self.grid = nn.Parameter(torch.zeros(1, dim, _LEARNED_GRID, _LEARNED_GRID))
            nn.init.trunc_normal_(self.grid, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "cpvt":
            return self.conv(x)
        if self.kind == "learnable":
            return F.interpolate(self.grid, size=x.shape[-2:], mode="bilinear", align_corners=False).expand_as(x)
        return _sinusoidal(x.shape[1], *x.shape[-2:], x.device, x.dtype)[None].expand_as(x)


class _Adapter(nn.Module):
    """phi_s and phi_p (Eq. 5 and 7): centres and fixed bases -> adapted prototypes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.semantic, self.spatial = nn.Linear(2 * dim, dim), nn.Linear(2 * dim, dim)

    def forward(self, semantic_centres, prototypes, spatial_centres, basis) -> tuple[Tensor, Tensor]:
        semantic = self.semantic(torch.cat([semantic_centres, prototypes.expand_as(semantic_centres)], dim=-1))
        spatial = self.spatial(torch.cat([spatial_centres, basis.expand_as(spatial_centres)], dim=-1))
        return semantic, spatial


def _dice(logits: Tensor, onehot: Tensor, valid: Tensor) -> Tensor:
    prob = logits.softmax(dim=1) * valid
    inter = (prob * onehot).sum((0, 2, 3))
    return (1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()


@register_classifier("ssa")
class SSAClassifier(PixelClassifier):
    """SSA head. Losses: ``ce``, ``dice`` (L_c), ``teacher_ce``, ``teacher_dice`` (L_g),
    ``rd`` (lambda_r L_rd, Eq. 11), ``sd`` (lambda_s L_sd, Eq. 15), ``pd`` (lambda_p L_pd, Eq. 16).

    Parameters (K classes, D width, cpvt, dot): inference 2KD + K + 4D^2 + 12D
    (S with bias, P, phi_s, phi_p, the depthwise PE); training-only 4D^2 + 2D (the
    teacher's phi_s, phi_p).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        loss_weights: str = "paper",
        logit: str = "dot",
        position_encoding: str = "cpvt",
        edge_size: int = 4,
        loss_resolution: str = "head",
    ) -> None:
        super().__init__(num_classes, in_channels, ignore_index)
        check_choice("ssa", "loss_weights", loss_weights, tuple(_LOSS_WEIGHTS))
        check_choice("ssa", "logit", logit, ("dot", "cosine"))
        check_choice("ssa", "position_encoding", position_encoding, ("cpvt", "sinusoidal", "learnable"))
        check_choice("ssa", "loss_resolution", loss_resolution, ("head", "label"))
        dim = in_channels
        self.lambda_r, self.lambda_s, self.lambda_p = _LOSS_WEIGHTS[loss_weights]
        self.edge_size, self.loss_resolution = edge_size, loss_resolution
        self.coarse = nn.Conv2d(dim, num_classes, 1)  # weights = fixed semantic prototypes S (Eq. 1)
        self.basis = nn.Parameter(torch.empty(num_classes, dim))  # position basis P (Eq. 7)
        nn.init.trunc_normal_(self.basis, std=0.02)
        self.position = _PositionEncoding(dim, position_encoding)
        self.adapter = _Adapter(dim)
        self.teacher = _Adapter(dim)
        self.projection = nn.Conv2d(dim, dim, 1) if logit == "cosine" else None

    def training_only_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def _classify(self, pixels: Tensor, semantic: Tensor, spatial: Tensor) -> Tensor:
        """Eq. 2: [B, D, H, W] x [B or 1, K, D] -> [B, K, H, W]."""
        prototypes = semantic + spatial
        if self.projection is None:
            return torch.einsum("bdhw,bkd->bkhw", pixels, prototypes.expand(pixels.shape[0], -1, -1))
        pixels = F.normalize(self.projection(pixels), dim=1)
        prototypes = F.normalize(prototypes, dim=-1).expand(pixels.shape[0], -1, -1)
        return _COSINE_SCALE * torch.einsum("bdhw,bkd->bkhw", pixels, prototypes)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        s_f = features.pixel
        p_f = self.position(s_f)
        coarse = self.coarse(s_f).flatten(2)  # M_c, [B, K, HW]
        flat_s, flat_p = s_f.flatten(2).transpose(1, 2), p_f.flatten(2).transpose(1, 2)  # [B, HW, D]
        class_weights = coarse.softmax(dim=1)  # Softmax_K
        semantic_centres = (class_weights @ flat_s) / class_weights.sum(-1, keepdim=True).clamp(min=1e-6)  # Eq. 4
        spatial_centres = coarse.softmax(dim=-1) @ flat_p  # Eq. 6, Softmax_HW
        prototypes = self.coarse.weight.flatten(1)  # S, [K, D]
        semantic, spatial = self.adapter(semantic_centres, prototypes, spatial_centres, self.basis)
        pixels = s_f + p_f
        logits = self._classify(pixels, semantic, spatial)
        if targets is None:
            return ClassifierOutput(logits)
        return ClassifierOutput(logits, self._losses(pixels, flat_s, flat_p, prototypes, semantic, spatial, logits, targets))

    def _losses(self, pixels, flat_s, flat_p, prototypes, semantic, spatial, logits, targets) -> dict[str, Tensor]:
        size = pixels.shape[-2:]
        labels = self.labels_at(targets, size)
        onehot, valid = self.one_hot(labels, pixels.dtype)  # M_g at the head's resolution
        mask = onehot.flatten(2)
        mass = mask.sum(-1, keepdim=True)
        semantic_centres = (mask @ flat_s).sum(0, keepdim=True) / mass.sum(0, keepdim=True).clamp(min=1)
        spatial_centres = (mask @ flat_p) / mass.clamp(min=1)
        t_semantic, t_spatial = self.teacher(semantic_centres, prototypes, spatial_centres, self.basis)
        t_logits = self._classify(pixels, t_semantic, t_spatial)
        edge = boundary_mask(targets.long(), self.edge_size, self.ignore_index).to(pixels.dtype)
        student, teacher = logits, t_logits
        if self.loss_resolution == "label":
            student, teacher = (F.interpolate(x, size=targets.shape[-2:], mode="bilinear", align_corners=False)
                                for x in (logits, t_logits))
            labels = targets.long()
            onehot, valid = self.one_hot(labels, pixels.dtype)
        else:
            edge = F.adaptive_max_pool2d(edge[:, None], size)[:, 0]  # any boundary pixel in the cell
        return {
            "ce": self.cross_entropy(logits, targets), "dice": _dice(student, onehot, valid),
            "teacher_ce": self.cross_entropy(teacher, labels), "teacher_dice": _dice(teacher, onehot, valid),
            "rd": self.lambda_r * _response_distillation(student, teacher.detach(), onehot, edge),
            "sd": self.lambda_s * _semantic_distillation(semantic, t_semantic.detach()),
            "pd": self.lambda_p * _spatial_distillation(spatial, t_spatial.detach()),
        }

def _response_distillation(student: Tensor, teacher: Tensor, onehot: Tensor, edge: Tensor) -> Tensor:
    """Eq. 8, 11, 12: per-pixel KD weighted by the teacher's entropy, averaged per class over
    its boundary and its interior pixels separately. onehot: [B, K, h, w] (zero at ignore
    pixels); edge: [B, h, w] in {0, 1}."""
    teacher_prob = teacher.softmax(dim=1)
    per_pixel = -(teacher_prob * student.log_softmax(dim=1)).sum(1)  # L_rd^i
    entropy = -(teacher_prob * teacher.log_softmax(dim=1)).sum(1)  # H^i
    regions = torch.stack([edge * entropy, (1 - edge) * entropy])  # [2, B, h, w]
    denominators = torch.einsum("bkhw,rbhw->rk", onehot, regions)
    numerators = torch.einsum("bkhw,rbhw->rk", onehot, regions * per_pixel)
    present = denominators > 0
    if not present.any():
        return per_pixel.sum() * 0
    return (numerators[present] / denominators[present]).mean()


def _semantic_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 13-15: only class pairs closer in the student than in the teacher are penalised."""
    relation = (student @ student.transpose(1, 2)).softmax(dim=-1)
    target = (teacher @ teacher.transpose(1, 2)).softmax(dim=-1)
    diff = (relation - target).clamp(min=0)
    diff = diff * (1 - torch.eye(diff.shape[-1], device=diff.device, dtype=diff.dtype))
    return diff.sum((1, 2)).mean() / diff.shape[-1]


def _spatial_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 16 as printed: (1/K) sum_i sum_j softmax(P_p)_ij * -log softmax(P-hat_p)_ij."""
    return -(student.softmax(dim=-1) * teacher.log_softmax(dim=-1)).sum(-1).mean()
