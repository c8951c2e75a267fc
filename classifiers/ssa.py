"""SSA: semantic and spatial adaptive classifier (Ma et al., ECCV 2024, §3).

Inference (Eq. 1, 2, 4-7): coarse mask M_c = S_f S^T + b (a 1x1 conv whose weights
are the fixed prototypes S); semantic centres S_c = Softmax_K(M_c) S_f and spatial
centres P_c = Softmax_HW(M_c) P_f with P_f = PE(S_f); adapted prototypes
S_p = phi_s([S_c, S]), P_p = phi_p([P, P_c]); output O = (S_f + P_f)(S_p + P_p)^T.
Training adds a ground-truth-guided teacher (training only) and Eq. 3's objective.

Presets (docs/architecture.md, "Fidelity"). ``preset="code"`` (default) is what xwmaxwma/SSA runs
(``models/decode_heads/*_head_ssa.py``, the same SSA code in each; ``models/losses/
ssa_loss.py``), which produced the paper's numbers; ``preset="paper"`` is the text.
Each row is an option that overrides the preset:

=========================== ============================= ====================================== ==================
setting                     paper                         code                                   option
=========================== ============================= ====================================== ==================
logits (Eq. 2)              dot product                   15 cos(S_f+P_f, W(S_p+P_p)), W Linear   ``logit``
                                                          (D, D, no bias); the teacher its own W
coarse-mask CE              none (Eq. 3)                  CE of M_c at label resolution           ``coarse_ce``
phi_s, phi_p (Eq. 5, 7)     1x1 conv = Linear(2D, D)      Linear(2D, D/2, no bias)-ReLU-          ``adapter``
                                                          Linear(D/2, D)
L_rd target (Eq. 8)         softmax(teacher)              0.5 softmax(teacher) + 0.5 one-hot      ``rd_onehot``
boundary edge size          4                             3                                       ``edge_size``
L_sd relation (Eq. 13)      softmax of dot products       softmax(15 cos), key side detached      ``sd_similarity``
L_pd (Eq. 16)               as printed: student weights   teacher-to-student CE (KD); with        ``pd_direction``
                            teacher log-probs             teacher = student its gradient is 0
lambda_r, lambda_s, lambda_p 1, 1, 1                      1, 10, 0.4                              ``rd_weight``,
                                                                                                  ``sd_weight``,
                                                                                                  ``pd_weight``
CE and dice terms           (not said: the code's)        at label resolution (bilinear,          ``loss_resolution``
                                                          align_corners=True); L_rd at the
                                                          head's resolution
student CE average          (not said: the code's)        over all pixels, ignored ones counting  ``loss_average``
                                                          0 (MMSeg's ``CrossEntropyLoss``, the
                                                          head's ``loss_decode``); the coarse and
                                                          teacher CEs over labelled pixels
                                                          (``nn.CrossEntropyLoss``) in both
=========================== ============================= ====================================== ==================

Where the text says nothing, both presets run the code (no option): Dropout2d(0.1) on
S_f before M_c (MMSegmentation's ``cls_seg``); position basis P initialised N(0, 1)
(``nn.Embedding``); a class absent from the batch (image) takes S (P), detached, as
its teacher semantic (spatial) centre; dice is sigmoid dice over each (image, present
class) mask with +1 smoothing, averaged over masks (``ssa_loss.py``), here with
ignore pixels left out; the teacher's phi_p input is [P_gt, P], the student's [P, P_c].
The printed L_pd pushes the student even when it equals the teacher, so it is
likely a typo; it is kept as printed for ``paper``.

Choices where both are open:
- Eq. 4 is normalised by each class's soft mass, so S_c is the average feature the
  text describes (the code does the same).
- CPVT encoding: P_f = depthwise 3x3 conv with bias of S_f (the code's ``get_feat_pos``).
  ``sinusoidal``: fixed 2-D sin/cos of (y, x); ``learnable``: a learned 16x16 grid
  resized to H x W (Table 7's variants).
- Teacher: its own phi_s, phi_p (and W), the training-only modules, sharing S, P and PE.
  Its semantic centres are averaged over the whole batch at the head's resolution
  (nearest labels; the note after Eq. 15), its spatial centres per image. Teacher
  outputs enter the distillation terms detached; the teacher learns from L_g only.
- Boundary (Eq. 9-11): the code takes cv2.Canny edges of the head-resolution label
  map, zeroes a 6-cell frame and dilates with an edge_size x edge_size kernel. Here an
  edge pixel is one whose label differs from the next pixel right or below (Canny's
  one-pixel edges of a label map, without OpenCV), then the same frame and dilation.
  At head maps of 12 cells or fewer the frame leaves no boundary, as in the code.
- L_rd (Eq. 10-12): per present class, (boundary mean + interior mean) / 2 of the
  teacher-entropy-weighted CE, an empty part counting 0, averaged over the classes
  present in the batch (the printed -1/(2K) sign is taken as a typo: it is a CE).
- ``loss_resolution="head"`` puts the coarse, teacher and dice terms at the head's
  resolution too (nearest labels): 16x fewer elements at stride 4, cheaper training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import LOSS_AVERAGES, ClassifierOutput, PixelClassifier, check_choice, full_precision, upsample
from classifiers.registry import register_classifier
from harness.errors import InputError

_COSINE_SCALE = 15.0  # the code's get_pred and get_inter_center_relations
_LEARNED_GRID = 16
_EDGE_FRAME = 6  # cells zeroed at each side of the edge map (the code's get_bd)


def boundary_mask(labels: Tensor, edge_size: int) -> Tensor:
    """[B, H, W] bool boundary of a label map, as the code's ``get_bd``: one-pixel edges (the
    label differs from the next pixel right or below), a ``_EDGE_FRAME``-cell frame
    zeroed, dilated with an ``edge_size`` square (anchor at its centre, as cv2.dilate)."""
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    edges[:, :-1, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    framed = torch.zeros_like(edges)
    inside = (slice(None), slice(_EDGE_FRAME, -_EDGE_FRAME), slice(_EDGE_FRAME, -_EDGE_FRAME))
    framed[inside] = edges[inside]
    before, after = edge_size // 2, edge_size - 1 - edge_size // 2
    padded = F.pad(framed[:, None].float(), (before, after, before, after))
    return F.max_pool2d(padded, edge_size, stride=1)[:, 0] > 0


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


def _adapter(dim: int, kind: str) -> nn.Module:
    """phi_s or phi_p (Eq. 5, 7): [centres, basis] (2D) -> D; ``linear`` (the text's 1x1 conv)
    or ``mlp`` (the code's Linear(2D, D/2, no bias) - ReLU - Linear(D/2, D))."""
    if kind == "linear":
        return nn.Linear(2 * dim, dim)
    return nn.Sequential(nn.Linear(2 * dim, dim // 2, bias=False), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))


class _Adapters(nn.Module):
    """One side's phi_s, phi_p and (``cosine`` logits) the prototype projection W."""

    def __init__(self, dim: int, kind: str, project: bool) -> None:
        super().__init__()
        self.semantic, self.spatial = _adapter(dim, kind), _adapter(dim, kind)
        self.project = nn.Linear(dim, dim, bias=False) if project else None


def _dice(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Sigmoid dice of each (image, present class) mask, +1 smoothing, averaged over those
    masks (the code's ``dice_loss``), with ignore pixels left out. ``logits`` [B, K, h, w] are
    resized to the labels' [B, H, W] (bilinear, align_corners=True) for the classes present in
    the batch only: resizing is per channel, so this equals resizing all K first."""
    present = labels.unique()
    present = present[present != ignore_index]
    if not present.numel():
        return logits.sum() * 0
    valid = (labels != ignore_index)[:, None]
    prob = upsample(logits[:, present], labels.shape[-2:], align_corners=True).sigmoid() * valid
    masks = labels[:, None] == present[:, None, None]  # [B, P, H, W]
    mass = masks.sum((2, 3))
    loss = 1 - (2 * (prob * masks).sum((2, 3)) + 1) / (prob.sum((2, 3)) + mass + 1)
    return loss[mass > 0].mean()


@register_classifier("ssa")
class SSAClassifier(PixelClassifier):
    """SSA head. Losses: ``ce``, ``dice`` (L_c), ``coarse_ce`` (``coarse_ce``), ``teacher_ce``,
    ``teacher_dice`` (L_g), ``rd`` (lambda_r L_rd), ``sd`` (lambda_s L_sd), ``pd`` (lambda_p L_pd).

    Options: ``preset`` code|paper and the options of its table (module docstring),
    ``position_encoding`` cpvt|sinusoidal|learnable. Parameters (K classes, D width,
    cpvt): inference 2KD + K + 10D + A + P, training-only A + P, with A the two
    adapters (``mlp`` 3D^2 + 2D, ``linear`` 4D^2 + 2D) and P the projection W
    (``cosine`` D^2, ``dot`` 0).
    """

    CONV_SEG = ("coarse",)

    PRESETS = {
        "code": {"logit": "cosine", "coarse_ce": True, "adapter": "mlp", "rd_onehot": 0.5, "edge_size": 3,
                 "sd_similarity": "cosine", "pd_direction": "teacher_to_student", "rd_weight": 1.0,
                 "sd_weight": 10.0, "pd_weight": 0.4, "loss_resolution": "label", "loss_average": "all"},
        "paper": {"logit": "dot", "coarse_ce": False, "adapter": "linear", "rd_onehot": 0.0, "edge_size": 4,
                  "sd_similarity": "dot", "pd_direction": "student_to_teacher", "rd_weight": 1.0,
                  "sd_weight": 1.0, "pd_weight": 1.0, "loss_resolution": "label", "loss_average": "all"},
    }
    PRESET_CHOICES = {"logit": ("dot", "cosine"), "adapter": ("mlp", "linear"), "sd_similarity": ("dot", "cosine"),
                      "pd_direction": ("teacher_to_student", "student_to_teacher"), "loss_resolution": ("head", "label"),
                      "loss_average": LOSS_AVERAGES}

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        preset: str = "code",
        position_encoding: str = "cpvt",
        logit: str | None = None,
        coarse_ce: bool | None = None,
        adapter: str | None = None,
        rd_onehot: float | None = None,
        edge_size: int | None = None,
        sd_similarity: str | None = None,
        pd_direction: str | None = None,
        rd_weight: float | None = None,
        sd_weight: float | None = None,
        pd_weight: float | None = None,
        loss_resolution: str | None = None,
        loss_average: str | None = None,
    ) -> None:
        o = self.preset_options("ssa", locals())
        super().__init__(num_classes, in_channels, ignore_index, o["loss_average"])
        check_choice("ssa", "position_encoding", position_encoding, ("cpvt", "sinusoidal", "learnable"))
        if not 0 <= o["rd_onehot"] <= 1:
            raise InputError(f"ssa: rd_onehot={o['rd_onehot']!r}; expected a value in [0, 1]")
        if o["edge_size"] < 1:
            raise InputError(f"ssa: edge_size={o['edge_size']!r}; expected >= 1")
        dim = in_channels
        self.preset, self.options = o["preset"], o
        self.cosine = o["logit"] == "cosine"
        self.dropout = nn.Dropout2d(0.1)
        self.coarse = nn.Conv2d(dim, num_classes, 1)  # weights = fixed semantic prototypes S (Eq. 1)
        self.basis = nn.Parameter(torch.randn(num_classes, dim))  # position basis P (Eq. 7), N(0, 1)
        self.position = _PositionEncoding(dim, position_encoding)
        self.adapter = _Adapters(dim, o["adapter"], self.cosine)
        self.teacher = _Adapters(dim, o["adapter"], self.cosine)

    def training_only_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def _adapt(self, side: _Adapters, semantic_centres, prototypes, spatial_pair) -> tuple[Tensor, Tensor]:
        """Eq. 5 and 7 for one side: S_p = phi_s([S_c, S]), P_p = phi_p(spatial_pair)."""
        semantic = side.semantic(torch.cat([semantic_centres, prototypes.expand_as(semantic_centres)], dim=-1))
        return semantic, side.spatial(torch.cat(spatial_pair, dim=-1))

    def _classify(self, side: _Adapters, pixels: Tensor, semantic: Tensor, spatial: Tensor) -> Tensor:
        """Eq. 2: [B, D, H, W] x [B or 1, K, D] -> [B, K, H, W]; ``cosine``: 15 cos(pixels, W(S_p + P_p))."""
        prototypes = (semantic + spatial).expand(pixels.shape[0], -1, -1)
        if not self.cosine:
            return torch.einsum("bdhw,bkd->bkhw", pixels, prototypes)
        prototypes = F.normalize(side.project(prototypes), dim=-1)
        return _COSINE_SCALE * torch.einsum("bdhw,bkd->bkhw", F.normalize(pixels, dim=1), prototypes)

    def _student(self, features: Features) -> tuple[Tensor, ...]:
        """The inference path, convolutions under autocast, the rest in float32: (M_c, logits, S_p,
        P_p, pixels, flat S_f, flat P_f, S)."""
        s_f = features.pixel
        p_f = self.position(s_f)
        coarse_map = self.coarse(self.dropout(s_f))  # M_c
        with full_precision(s_f):
            s_f, p_f, coarse_map = s_f.float(), p_f.float(), coarse_map.float()
            coarse = coarse_map.flatten(2)  # [B, K, HW]
            flat_s, flat_p = s_f.flatten(2).transpose(1, 2), p_f.flatten(2).transpose(1, 2)  # [B, HW, D]
            class_weights = coarse.softmax(dim=1)  # Softmax_K
            semantic_centres = (class_weights @ flat_s) / class_weights.sum(-1, keepdim=True).clamp(min=1e-6)  # Eq. 4
            spatial_centres = coarse.softmax(dim=-1) @ flat_p  # Eq. 6, Softmax_HW
            prototypes = self.coarse.weight.flatten(1)  # S, [K, D]
            basis = self.basis.expand_as(spatial_centres)
            semantic, spatial = self._adapt(self.adapter, semantic_centres, prototypes, (basis, spatial_centres))
            pixels = s_f + p_f
            logits = self._classify(self.adapter, pixels, semantic, spatial)
        return coarse_map, logits, semantic, spatial, pixels, flat_s, flat_p, prototypes

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        """The convolutions under autocast, if any; centres, adapters, logits and losses in float32."""
        coarse_map, logits, semantic, spatial, pixels, flat_s, flat_p, prototypes = self._student(features)
        if targets is None:
            return ClassifierOutput(logits)
        with full_precision(logits):
            student = (coarse_map, logits, semantic, spatial)
            return ClassifierOutput(logits, self._losses(pixels, flat_s, flat_p, prototypes, student, targets))

    def diagnostics(self, features: Features, targets: Tensor) -> dict[str, Tensor]:
        """How far adaptation moves each class's prototype: ``prototype_shift`` [K], 1 - cos(S_k,
        S_p,k) between the fixed semantic prototype S (the coarse classifier's weights, Eq. 1) and
        the image's adapted one S_p (Eq. 5), and its mean over classes, ``mean_prototype_shift``."""
        _, _, semantic, _, _, _, _, prototypes = self._student(features)
        shift = 1 - F.cosine_similarity(semantic, prototypes.float()[None], dim=-1).mean(0)  # [K]
        return {"prototype_shift": shift, "mean_prototype_shift": shift.mean()}

    def _teacher(self, pixels, flat_s, flat_p, prototypes, onehot) -> tuple[Tensor, Tensor, Tensor]:
        """The GT-guided teacher (Eq. 15 note) from the head-resolution one-hot labels M_g: logits,
        S_p-hat [1, K, D], P_p-hat [B, K, D]. Centres of a class absent from the batch (image)
        fall back to S (P), detached, as in the code."""
        mask = onehot.flatten(2)  # [B, K, HW]
        mass = mask.sum(-1, keepdim=True)  # [B, K, 1]
        batch_mass = mass.sum(0)
        semantic_centres = (mask @ flat_s).sum(0) / batch_mass.clamp(min=1)
        semantic_centres = torch.where(batch_mass > 0, semantic_centres, prototypes.detach())[None]
        basis = self.basis.expand(pixels.shape[0], -1, -1)
        spatial_centres = torch.where(mass > 0, (mask @ flat_p) / mass.clamp(min=1), basis.detach())
        semantic, spatial = self._adapt(self.teacher, semantic_centres, prototypes, (spatial_centres, basis))
        return self._classify(self.teacher, pixels, semantic, spatial), semantic, spatial

    def _losses(self, pixels, flat_s, flat_p, prototypes, student, targets) -> dict[str, Tensor]:
        o = self.options
        coarse, logits, semantic, spatial = student
        head_labels = self.labels_at(targets, pixels.shape[-2:])
        head_onehot = self.one_hot(head_labels, pixels.dtype)[0]
        t_logits, t_semantic, t_spatial = self._teacher(pixels, flat_s, flat_p, prototypes, head_onehot)
        labels = targets.long() if o["loss_resolution"] == "label" else head_labels
        losses = {
            "ce": self.cross_entropy(logits, targets, align_corners=True),
            "dice": _dice(logits, labels, self.ignore_index),
            "teacher_ce": self.cross_entropy(t_logits, labels, align_corners=True, average="labelled"),
            "teacher_dice": _dice(t_logits, labels, self.ignore_index),
        }
        if o["coarse_ce"]:
            losses["coarse_ce"] = self.cross_entropy(coarse, labels, align_corners=True, average="labelled")
        edge = boundary_mask(head_labels, o["edge_size"]).to(pixels.dtype)
        losses["rd"] = o["rd_weight"] * _response_distillation(logits, t_logits.detach(), head_onehot, edge,
                                                               o["rd_onehot"])
        losses["sd"] = o["sd_weight"] * _semantic_distillation(semantic, t_semantic.detach(), o["sd_similarity"])
        losses["pd"] = o["pd_weight"] * _spatial_distillation(spatial, t_spatial.detach(), o["pd_direction"])
        return losses


def _response_distillation(student: Tensor, teacher: Tensor, onehot: Tensor, edge: Tensor, onehot_share: float) -> Tensor:
    """Eq. 8-12 at the head's resolution: per-pixel CE to the target (1 - s) softmax(teacher) +
    s one-hot, weighted by the teacher's entropy; per present class (boundary mean + interior
    mean) / 2, an empty part counting 0; averaged over the present classes.
    onehot: [B, K, h, w] (zero at ignore pixels); edge: [B, h, w] in {0, 1}."""
    teacher_prob = teacher.softmax(dim=1)
    target = teacher_prob if onehot_share == 0 else (1 - onehot_share) * teacher_prob + onehot_share * onehot
    per_pixel = -(target * student.log_softmax(dim=1)).sum(1)  # L_rd^i
    entropy = -(teacher_prob * teacher.log_softmax(dim=1)).sum(1)  # H^i
    regions = torch.stack([edge * entropy, (1 - edge) * entropy])  # [2, B, h, w]
    denominators = torch.einsum("bkhw,rbhw->rk", onehot, regions)
    numerators = torch.einsum("bkhw,rbhw->rk", onehot, regions * per_pixel)
    present = onehot.sum((0, 2, 3)) > 0
    if not present.any():
        return per_pixel.sum() * 0
    return (numerators / (denominators + 1e-12)).mean(0)[present].mean()


def _relations(prototypes: Tensor, similarity: str) -> Tensor:
    """Eq. 13: row-softmax of the class-to-class similarities of [B, K, D] prototypes;
    ``cosine``: 15 cos with the key side detached (the code's get_inter_center_relations)."""
    if similarity == "dot":
        return (prototypes @ prototypes.transpose(1, 2)).softmax(dim=-1)
    unit = F.normalize(prototypes, dim=-1)
    return (_COSINE_SCALE * unit @ unit.detach().transpose(1, 2)).softmax(dim=-1)


def _semantic_distillation(student: Tensor, teacher: Tensor, similarity: str) -> Tensor:
    """Eq. 14-15: only class pairs closer in the student than in the teacher are penalised;
    the sum over each row's off-diagonal entries, averaged over rows (and images)."""
    diff = (_relations(student, similarity) - _relations(teacher, similarity)).clamp(min=0)
    diff = diff * (1 - torch.eye(diff.shape[-1], device=diff.device, dtype=diff.dtype))
    return diff.sum(-1).mean()


def _spatial_distillation(student: Tensor, teacher: Tensor, direction: str) -> Tensor:
    """Eq. 16 over the D dimensions of each class's spatial prototype, averaged over classes.
    ``teacher_to_student`` (code): -sum softmax(P-hat_p) log softmax(P_p), zero gradient when
    they agree; ``student_to_teacher`` (as printed): -sum softmax(P_p) log softmax(P-hat_p)."""
    if direction == "student_to_teacher":
        student, teacher = teacher, student
    return -(teacher.softmax(dim=-1) * student.log_softmax(dim=-1)).sum(-1).mean()
