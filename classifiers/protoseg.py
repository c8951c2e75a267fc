"""ProtoSeg: non-learnable prototypes (Zhou et al., "Rethinking Semantic Segmentation:
A Prototype View", CVPR 2022, §3 and supplement §S2).

Each class c has K prototypes p_{c,k} (a buffer, never a parameter). Pixels are
classified by their closest prototype (Eq. 5-6); training adds within-class
online clustering by Sinkhorn-Knopp (Eq. 8-10, Algorithm 1), the pixel-prototype
contrastive loss (Eq. 11), the compactness loss (Eq. 12) and a momentum update of
the prototypes from the clustering (Eq. 14).

Where the paper is open, and what this file does:
- Eq. 6 has no temperature: class scores are plain cosines in [-1, 1]. The public
  code passes them through a LayerNorm over the C classes (learnable affine)
  before the CE and at inference: ``class_score_norm="layernorm"``.
- Targets are brought to the feature resolution by nearest-neighbour sampling for
  clustering, PPC, PPD and the update; Eq. 7's CE is computed on logits upsampled
  to the label resolution, like every other head here.
- Eq. 14's mean i_{c,k} is over the pixels of the current batch assigned to
  p_{c,k}; prototypes that got no pixel keep their value; updated ones are re-normalised.
- Under ``torch.distributed`` the per-prototype sums and counts are all-reduced
  before the update, so every rank applies the same global centres.
- Initial prototypes: truncated-normal (std 0.02) vectors, l2-normalised (as in
  the public code; the paper does not say).

Named options reproducing the public code: ``assignment="gumbel"`` (the update
uses a hard Gumbel-softmax sample drawn with the Sinkhorn probabilities taken as
logits at temperature 0.5, while PPC/PPD targets stay the argmax; since those
probabilities lie in [0, 1] the sample is close to uniform, which is why that
code's prototypes of a class collapse onto the class mean), ``update_on="correct"``
(only pixels the head already classifies correctly update the prototypes), and
``tau=1.0`` (its PPC temperature).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import ClassifierOutput, PixelClassifier, check_choice
from classifiers.registry import register_classifier
from harness.errors import InputError

_GUMBEL_TEMPERATURE = 0.5  # the public code's F.gumbel_softmax(..., tau=0.5, hard=True)


def class_sinkhorn(scores: Tensor, labels: Tensor, num_classes: int, iters: int = 3, kappa: float = 0.05) -> Tensor:
    """Algorithm 1 run independently for every class at once, in Algorithm 1's layout.

    scores: [K, N] similarities of each pixel (column) to the K prototypes of its own
    class (``labels[n]``), the layout the head's [C*K, HW] cosine map gives without a
    transpose. Returns the assignment probabilities Q [K, N] (contiguous), computed
    in at least float32 and cast back to ``scores.dtype``: each pixel's column sums
    to 1 and, within a class of N_c pixels, each prototype's row sums to about N_c / K.

    Per-class row sums are one ``index_add`` along the pixels, their broadcast back
    one ``gather`` and the pixel sums a reduction over K; every step is in place.
    Take the assignment as ``q.max(dim=0).indices`` (``argmax`` over dim 0 is ~7x
    slower on CPU for this shape).

    Stability: each class's largest score is subtracted before exp(score / kappa)
    and exponents are floored at -80 (exp(-80) is still a normal float32), so
    nothing overflows or becomes 0/0. Subtracting one constant per class, like
    Algorithm 1's initial division by the total, is cancelled exactly by the first
    row normalisation, so the result equals Algorithm 1 (the floor only touches
    pixels more than 80 * kappa below their class's best score, never the case for
    cosines with kappa >= 0.025).
    """
    dtype, work = scores.dtype, torch.promote_types(scores.dtype, torch.float32)
    labels = labels.long()
    num_prototypes, num_pixels = scores.shape
    scores = scores.to(work)
    class_max = scores.new_full((num_classes,), -math.inf)
    class_max = class_max.scatter_reduce(0, labels, scores.amax(dim=0), reduce="amax")
    q = torch.sub(scores, class_max[labels], out=scores.new_empty(num_prototypes, num_pixels))
    q.div_(kappa).clamp_(min=-80.0).exp_()
    pixels_in_class = torch.bincount(labels, minlength=num_classes).to(work)[labels]
    class_of_entry = labels.expand(num_prototypes, num_pixels)
    scratch = torch.empty_like(q)  # reused: allocating K x N every step costs more than the arithmetic
    for _ in range(iters):
        row_sums = q.new_zeros(num_prototypes, num_classes).index_add_(1, labels, q).mul_(num_prototypes)
        q.div_(torch.gather(row_sums, 1, class_of_entry, out=scratch))  # each prototype's row sums to 1/K per class
        q.div_(q.sum(dim=0).mul_(pixels_in_class))  # each pixel's column sums to 1/N_c
    return q.mul_(pixels_in_class).to(dtype)


def sinkhorn(scores: Tensor, iters: int = 3, kappa: float = 0.05) -> Tensor:
    """Sinkhorn-Knopp assignment of N pixels (rows) to K prototypes (columns), Eq. 10.

    The supplement's Algorithm 1, transposed, made stable (see ``class_sinkhorn``):
    rows of the result sum to 1, columns to ~N/K; fp16/bf16 input gives finite
    output (computed in float32, returned in the input dtype).
    """
    labels = scores.new_zeros(scores.shape[0], dtype=torch.long)
    return class_sinkhorn(scores.t(), labels, 1, iters, kappa).t()


def momentum_update(prototypes: Tensor, embeddings: Tensor, index: Tensor, momentum: float) -> Tensor:
    """Eq. 14 for every prototype at once: p <- mu p + (1 - mu) normalise(mean of its pixels).

    prototypes: [C, K, D]; embeddings: [D, N] channel-major, as the head holds them
    (summing along the pixels of that layout is ~2x faster than along rows of [N, D]);
    index: [N] flat prototype ids c*K + k. Prototypes with no pixel keep their value
    (bit for bit); updated ones are l2-normalised. Sums and counts are all-reduced
    across ranks when ``torch.distributed`` is initialised.
    """
    num_classes, num_prototypes, dim = prototypes.shape
    flat = prototypes.reshape(-1, dim)
    sums = flat.new_zeros(dim, flat.shape[0]).index_add_(1, index, embeddings.to(flat.dtype))
    counts = torch.bincount(index, minlength=flat.shape[0]).to(flat.dtype)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    hit = counts[:, None] > 0
    updated = F.normalize(momentum * flat + (1 - momentum) * F.normalize(sums.t(), dim=1), dim=1)
    return torch.where(hit, updated, flat).view(num_classes, num_prototypes, dim)


@register_classifier("protoseg")
class ProtoSegClassifier(PixelClassifier):
    """ProtoSeg head. Losses: ``ce`` (Eq. 7), ``ppc`` (``ppc_weight`` x Eq. 11) and
    ``ppd`` (``ppd_weight`` x Eq. 12), i.e. Eq. 13 term by term.

    Hyper-parameters (paper defaults): ``num_prototypes`` K=10, ``momentum`` mu=0.999,
    ``tau`` 0.1, ``kappa`` 0.05, ``sinkhorn_iters`` 3, ``ppc_weight`` 0.01,
    ``ppd_weight`` 0.01; ``projection`` adds the public code's 1x1 conv-BN-ReLU-1x1
    conv embedding head; ``assignment`` argmax|gumbel, ``update_on`` all|correct,
    ``class_score_norm`` none|layernorm (see the module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        num_prototypes: int = 10,
        momentum: float = 0.999,
        tau: float = 0.1,
        kappa: float = 0.05,
        sinkhorn_iters: int = 3,
        ppc_weight: float = 0.01,
        ppd_weight: float = 0.01,
        projection: bool = False,
        assignment: str = "argmax",
        update_on: str = "all",
        class_score_norm: str = "none",
    ) -> None:
        super().__init__(num_classes, in_channels, ignore_index)
        check_choice("protoseg", "assignment", assignment, ("argmax", "gumbel"))
        check_choice("protoseg", "update_on", update_on, ("all", "correct"))
        check_choice("protoseg", "class_score_norm", class_score_norm, ("none", "layernorm"))
        if num_prototypes < 1:
            raise InputError(f"protoseg: num_prototypes={num_prototypes}; expected >= 1")
        self.num_prototypes, self.momentum, self.tau, self.kappa = num_prototypes, momentum, tau, kappa
        self.sinkhorn_iters, self.ppc_weight, self.ppd_weight = sinkhorn_iters, ppc_weight, ppd_weight
        self.assignment, self.update_on = assignment, update_on
        self.projection = None
        if projection:
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, in_channels, 1),
            )
        self.class_norm = nn.LayerNorm(num_classes) if class_score_norm == "layernorm" else None
        prototypes = torch.empty(num_classes, num_prototypes, in_channels)
        nn.init.trunc_normal_(prototypes, std=0.02)
        self.register_buffer("prototypes", F.normalize(prototypes, dim=-1))

    def _embed(self, pixel: Tensor) -> Tensor:
        if self.projection is not None:
            pixel = self.projection(pixel)
        return F.normalize(pixel, dim=1)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        embeddings = self._embed(features.pixel)
        batch, dim, height, width = embeddings.shape
        flat_prototypes = self.prototypes.reshape(-1, dim).to(embeddings.dtype)
        # [B, C*K, HW] cosines; Eq. 6: class score = max over the class's K prototypes.
        cosines = torch.matmul(flat_prototypes, embeddings.flatten(2))
        if self.num_prototypes == 1:
            logits = cosines.view(batch, self.num_classes, height, width)
        else:
            logits = cosines.view(batch, self.num_classes, self.num_prototypes, height * width).amax(dim=2)
            logits = logits.view(batch, self.num_classes, height, width)
        if self.class_norm is not None:
            logits = self.class_norm(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if targets is None:
            return ClassifierOutput(logits)
        return ClassifierOutput(logits, self._losses(embeddings, cosines, logits, targets))

    def _losses(self, embeddings: Tensor, cosines: Tensor, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Eq. 7, 11, 12 from the [B, C*K, HW] cosine map as it is (no [N, C*K] copy)."""
        height, width = embeddings.shape[-2:]
        label_map = self.labels_at(targets, (height, width)).flatten(1)  # [B, HW]
        valid_map = label_map != self.ignore_index
        valid = valid_map.flatten()
        # Own-class cosines [K, N]: rows c*K .. c*K+K-1 of each valid pixel's column.
        rows = label_map.masked_fill(~valid_map, 0)[:, None, :] * self.num_prototypes
        rows = rows + torch.arange(self.num_prototypes, device=rows.device)[None, :, None]
        own = cosines.gather(1, rows).transpose(0, 1).flatten(1)[:, valid]
        labels = label_map.flatten()[valid]
        with torch.no_grad():
            probabilities = class_sinkhorn(own.detach(), labels, self.num_classes, self.sinkhorn_iters, self.kappa)
            assigned = probabilities.max(dim=0).indices  # k_i
        losses = {"ce": self.cross_entropy(logits, targets)}
        if labels.numel():
            target_map = torch.full_like(label_map, -1)  # PPC targets c*K + k_i; -1 = ignored pixel
            target_map.view(-1)[valid] = labels * self.num_prototypes + assigned
            ppc = F.cross_entropy(cosines / self.tau, target_map, ignore_index=-1)
            ppd = (1 - own.gather(0, assigned[None])).pow(2).mean()
        else:
            ppc = ppd = cosines.sum() * 0
        losses["ppc"] = self.ppc_weight * ppc
        losses["ppd"] = self.ppd_weight * ppd
        if self.training:
            with torch.no_grad():
                self._update(embeddings, logits, valid, labels, probabilities, assigned)
        return losses

    def _update(self, embeddings, logits, valid, labels, probabilities, assigned) -> None:
        pixels = embeddings.detach().flatten(2).transpose(0, 1).flatten(1)[:, valid]  # [D, N]
        if self.assignment == "gumbel":
            probabilities = probabilities.t().float()
            assigned = F.gumbel_softmax(probabilities, tau=_GUMBEL_TEMPERATURE, hard=True).max(dim=1).indices
        index = labels * self.num_prototypes + assigned
        if self.update_on == "correct":
            correct = logits.argmax(dim=1).flatten()[valid] == labels
            pixels, index = pixels[:, correct], index[correct]
        # A new tensor, not an in-place copy: autograd saved the old one for the backward pass.
        self.prototypes = momentum_update(self.prototypes, pixels, index, self.momentum)
