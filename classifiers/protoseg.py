"""ProtoSeg: non-learnable prototypes (Zhou et al., "Rethinking Semantic Segmentation:
A Prototype View", CVPR 2022, §3 and supplement §S2).

Each class c has K prototypes p_{c,k} (a buffer, never a parameter). Pixels are
classified by their closest prototype (Eq. 5-6); training adds within-class
online clustering by Sinkhorn-Knopp (Eq. 8-10, Algorithm 1), the pixel-prototype
contrastive loss (Eq. 11), the compactness loss (Eq. 12) and a momentum update of
the prototypes from the clustering (Eq. 14).

Presets (docs/architecture.md, "Fidelity"). ``preset="code"`` (default) is what tfzhou/ProtoSeg runs
(``lib/models/nets/hrnet.py`` HRNet_W48_Proto, ``lib/models/modules/sinkhorn.py``,
``lib/models/modules/contrast.py``, ``lib/loss/loss_proto.py``), which produced the
paper's numbers; ``preset="paper"`` is the text. Each row is an option that overrides
the preset:

============================ ============================ ================================= ====================
setting                      paper                        code                              option
============================ ============================ ================================= ====================
class scores (CE, argmax)    cosine in [-1, 1] (Eq. 6)    max over K, LayerNorm(C) affine   ``class_score_norm``
projection of the pixels     none                         conv1x1-ReLU-conv1x1, no BN       ``projection``
l2 after the projection      (no projection)              along the width (dim -1 of NCHW)  ``projection_l2``
embedding normalisation      l2                           LayerNorm(D), then l2             ``feat_norm``
PPC temperature (Eq. 11)     0.1                          1                                 ``tau``
PPD weight (Eq. 13)          0.01                         0.001                             ``ppd_weight``
assignment for the update    argmax of Q (Eq. 14)         hard Gumbel sample of Q, tau 0.5  ``assignment``
pixels that update           all                          correctly classified only         ``update_on``
CE upsampling                (not said: the code's)       bilinear, align_corners=True      ``align_corners``
CE and PPC average           (not said: the code's)       over labelled pixels (torch's     ``loss_average``
                                                          ``nn.CrossEntropyLoss``, FSCELoss)
============================ ============================ ================================= ====================

Both: K=10, mu=0.999, 3 Sinkhorn iterations, kappa 0.05, PPC weight 0.01, prototypes
re-normalised every forward and after each update, updates from iteration 0.
The code's ``ProjectionHead`` ends in ``l2_normalize(x) = F.normalize(x, dim=-1)`` on the
NCHW map, so it normalises each channel's row along the width, not each pixel; the
LayerNorm over D and the final l2 over D come after it. ``projection_l2="channels"``
is the per-pixel l2 the text's Eq. 5 implies.
Why the printed Eq. 6 does not train: with logits in [-1, 1] the best reachable
p(correct) over C=11 classes is 0.43, so the CE never falls below 0.86 nats; the
LayerNorm divides by the scores' spread (about 0.15), a temperature of about 1/7.
What the LayerNorm costs: it is blind to the scores' scale, so once a pixel of class c
scores class b highest, its gradient keeps "raise s_c" but loses most of "lower s_b". From
random weights on scenes that are 90 % background this stalls training (the quickstart
from scratch: 12.1 mIoU against softmax's 49.4, 41.5 with a fixed scale of 15 instead);
from pretrained weights it does not (README, below the heads table).

Choices where both are open:
- Targets are brought to the feature resolution by nearest-neighbour sampling for
  clustering, PPC, PPD and the update; Eq. 7's CE is computed on logits upsampled
  to the label resolution, like every other head here.
- Eq. 14's mean i_{c,k} is over the pixels of the optimiser step's global batch assigned
  to p_{c,k}: each training forward gathers per-prototype sums and counts, and
  ``after_optimizer_step`` (called by the trainer once per step) all-reduces them across
  ranks under ``torch.distributed`` and applies one update, so every micro-batch of a
  step (``train.accumulate``) and every rank count, all see the same prototypes, and every
  rank holds the same ones after (the code updates once per iteration of batch 16 over 8
  GPUs, averaging each rank's updated prototypes). Prototypes that got no pixel keep their
  value; updated ones are re-normalised.
- Under autocast the embeddings' normalisations, the cosines, Sinkhorn and the update
  run in float32 (``full_precision``); only the projection's convolutions are autocast.
- Initial prototypes: truncated-normal (std 0.02) vectors, l2-normalised (the code).
- The Gumbel sample takes the Sinkhorn probabilities as logits; since they lie in
  [0, 1] it is close to uniform, which is why the code's prototypes of a class
  collapse onto the class mean (``test_public_code_gumbel_assignment_collapses_prototypes``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import LOSS_AVERAGES, ChannelLayerNorm, ClassifierOutput, PixelClassifier, full_precision
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


def prototype_sums(prototypes: Tensor, embeddings: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Per-prototype sums [D, C*K] and counts [C*K] of ``embeddings`` [D, N] (channel-major, as
    the head holds them: summing along the pixels of that layout is ~2x faster than along rows
    of [N, D]) assigned to flat prototype ids ``index`` [N] (c*K + k)."""
    flat = prototypes.reshape(-1, prototypes.shape[-1])
    sums = flat.new_zeros(flat.shape[1], flat.shape[0]).index_add_(1, index, embeddings.to(flat.dtype))
    return sums, torch.bincount(index, minlength=flat.shape[0]).to(flat.dtype)


def apply_momentum(prototypes: Tensor, sums: Tensor, counts: Tensor, momentum: float) -> Tensor:
    """Eq. 14 for every prototype at once: p <- mu p + (1 - mu) normalise(mean of its pixels),
    from ``prototype_sums``. Sums and counts are all-reduced across ranks first when
    ``torch.distributed`` is initialised (every rank must call it). Prototypes with no pixel
    keep their value (bit for bit); updated ones are l2-normalised. Computed in float32."""
    num_classes, num_prototypes, dim = prototypes.shape
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    flat = prototypes.reshape(-1, dim)
    with full_precision(flat):
        updated = F.normalize(momentum * flat + (1 - momentum) * F.normalize(sums.t(), dim=1), dim=1)
    return torch.where(counts[:, None] > 0, updated, flat).view(num_classes, num_prototypes, dim)


def momentum_update(prototypes: Tensor, embeddings: Tensor, index: Tensor, momentum: float) -> Tensor:
    """Eq. 14 from one set of pixels: ``apply_momentum`` of their ``prototype_sums``."""
    return apply_momentum(prototypes, *prototype_sums(prototypes, embeddings, index), momentum)


@register_classifier("protoseg")
class ProtoSegClassifier(PixelClassifier):
    """ProtoSeg head. Losses: ``ce`` (Eq. 7), ``ppc`` (``ppc_weight`` x Eq. 11) and
    ``ppd`` (``ppd_weight`` x Eq. 12), i.e. Eq. 13 term by term.

    Hyper-parameters: ``preset`` code|paper and the options of its table (module
    docstring), ``num_prototypes`` K=10, ``momentum`` mu=0.999, ``kappa`` 0.05,
    ``sinkhorn_iters`` 3, ``ppc_weight`` 0.01.
    """

    ACCUMULATES_STATE = True  # prototypes move once per step, from every micro-batch (after_optimizer_step)
    PRESETS = {
        "code": {"class_score_norm": "layernorm", "projection": True, "projection_l2": "width", "feat_norm": True,
                 "tau": 1.0, "ppd_weight": 0.001, "assignment": "gumbel", "update_on": "correct", "align_corners": True,
                 "loss_average": "labelled"},
        "paper": {"class_score_norm": "none", "projection": False, "projection_l2": "channels", "feat_norm": False,
                  "tau": 0.1, "ppd_weight": 0.01, "assignment": "argmax", "update_on": "all", "align_corners": True,
                  "loss_average": "labelled"},
    }
    PRESET_CHOICES = {"class_score_norm": ("none", "layernorm"), "projection_l2": ("width", "channels"),
                      "assignment": ("argmax", "gumbel"), "update_on": ("all", "correct"), "loss_average": LOSS_AVERAGES}

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        ignore_index: int = 255,
        preset: str = "code",
        num_prototypes: int = 10,
        momentum: float = 0.999,
        kappa: float = 0.05,
        sinkhorn_iters: int = 3,
        ppc_weight: float = 0.01,
        class_score_norm: str | None = None,
        projection: bool | None = None,
        projection_l2: str | None = None,
        feat_norm: bool | None = None,
        tau: float | None = None,
        ppd_weight: float | None = None,
        assignment: str | None = None,
        update_on: str | None = None,
        align_corners: bool | None = None,
        loss_average: str | None = None,
    ) -> None:
        o = self.preset_options("protoseg", locals())
        super().__init__(num_classes, in_channels, ignore_index, o["loss_average"])
        if num_prototypes < 1:
            raise InputError(f"protoseg: num_prototypes={num_prototypes}; expected >= 1")
        self.preset = o["preset"]
        self.num_prototypes, self.momentum, self.tau, self.kappa = num_prototypes, momentum, o["tau"], kappa
        self.sinkhorn_iters, self.ppc_weight, self.ppd_weight = sinkhorn_iters, ppc_weight, o["ppd_weight"]
        self.assignment, self.update_on, self.align_corners = o["assignment"], o["update_on"], o["align_corners"]
        self.projection, self.projection_l2_dim = None, 3 if o["projection_l2"] == "width" else 1
        if o["projection"]:
            self.projection = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True),
                                            nn.Conv2d(in_channels, in_channels, 1))
        self.feat_norm = ChannelLayerNorm(in_channels) if o["feat_norm"] else None
        self.class_norm = nn.LayerNorm(num_classes) if o["class_score_norm"] == "layernorm" else None
        prototypes = torch.empty(num_classes, num_prototypes, in_channels)
        nn.init.trunc_normal_(prototypes, std=0.02)
        self.register_buffer("prototypes", F.normalize(prototypes, dim=-1))
        self._pending: tuple[Tensor, Tensor] | None = None  # this step's (sums, counts), ``prototype_sums``

    def _embed(self, pixel: Tensor) -> Tensor:
        """Unit-length float32 embeddings [B, D, H, W], as the code's ``proj_head`` + ``feat_norm``:
        projected (under autocast, if any) and l2-normalised along ``projection_l2`` (the code's
        ``l2_normalize`` takes dim -1 of the NCHW map: each channel's row along the width), then
        (``feat_norm``) LayerNorm over D, then l2 over D; the normalisations in float32."""
        if self.projection is not None:
            pixel = self.projection(pixel)
        with full_precision(pixel):
            pixel = pixel.float()
            if self.projection is not None:
                pixel = F.normalize(pixel, dim=self.projection_l2_dim)
            if self.feat_norm is not None:
                pixel = self.feat_norm(pixel)
            return F.normalize(pixel, dim=1)

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        """Logits (and losses) in float32 whatever the autocast: cosines, Sinkhorn and the
        momentum sums are precision-sensitive."""
        embeddings = self._embed(features.pixel)
        batch, dim, height, width = embeddings.shape
        with full_precision(embeddings):
            # [B, C*K, HW] cosines; Eq. 6: class score = max over the class's K prototypes.
            cosines = torch.matmul(self.prototypes.reshape(-1, dim).float(), embeddings.flatten(2))
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

    def diagnostics(self, features: Features, targets: Tensor) -> dict[str, Tensor]:
        """The collapse made visible. ``prototype_usage`` [C, K]: the share of class c's labelled
        pixels (at the head's resolution) whose closest own prototype is k (1/K each when all are
        used, one 1 when the class has collapsed onto one prototype; NaN for a class the image
        lacks); ``top_prototype_share``: its row maxima's mean over the present classes;
        ``within_class_cosine`` [C]: the mean cosine between a class's distinct prototypes (1: the
        same vector) and its mean over classes, ``mean_within_class_cosine``."""
        embeddings = self._embed(features.pixel)
        batch, dim, height, width = embeddings.shape
        classes, k = self.num_classes, self.num_prototypes
        labels = self.labels_at(targets, (height, width)).flatten()  # [B*HW], image-major
        cosines = torch.matmul(self.prototypes.reshape(-1, dim).float(), embeddings.flatten(2))  # [B, C*K, HW]
        cosines = cosines.view(batch, classes, k, -1).permute(0, 3, 1, 2).reshape(-1, classes, k)  # [B*HW, C, K]
        valid = labels != self.ignore_index
        nearest = cosines[valid, labels[valid]].argmax(dim=1)
        counts = torch.zeros(classes, k, device=embeddings.device)
        counts.index_put_((labels[valid], nearest), torch.ones_like(nearest, dtype=counts.dtype), accumulate=True)
        usage = counts / counts.sum(dim=1, keepdim=True)  # 0/0 = NaN for an absent class
        prototypes = F.normalize(self.prototypes.float(), dim=-1)
        gram = prototypes @ prototypes.transpose(1, 2)  # [C, K, K]
        within = (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1)) if k > 1 \
            else torch.full((classes,), float("nan"), device=gram.device)
        return {"prototype_usage": usage, "top_prototype_share": usage.amax(dim=1).nanmean(),
                "within_class_cosine": within, "mean_within_class_cosine": within.mean()}

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
        losses = {"ce": self.cross_entropy(logits, targets, self.align_corners)}
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
        """Gather this forward's pixels for the step's prototype update (``after_optimizer_step``)."""
        pixels = embeddings.detach().flatten(2).transpose(0, 1).flatten(1)[:, valid]  # [D, N]
        if self.assignment == "gumbel":
            probabilities = probabilities.t().float()
            assigned = F.gumbel_softmax(probabilities, tau=_GUMBEL_TEMPERATURE, hard=True).max(dim=1).indices
        index = labels * self.num_prototypes + assigned
        if self.update_on == "correct":
            correct = logits.argmax(dim=1).flatten()[valid] == labels
            pixels, index = pixels[:, correct], index[correct]
        sums, counts = prototype_sums(self.prototypes, pixels, index)
        if self._pending is not None:
            sums, counts = sums + self._pending[0], counts + self._pending[1]
        self._pending = sums, counts

    def after_optimizer_step(self) -> None:
        """Eq. 14 once per optimiser step, from the pixels of every micro-batch and worker (sums
        all-reduced), as the authors' code updates once per iteration of batch 16 over 8 GPUs."""
        if self._pending is None:
            return
        sums, counts = self._pending
        self._pending = None
        # A new tensor, not an in-place copy: autograd may hold the old one.
        self.prototypes = apply_momentum(self.prototypes, sums, counts, self.momentum)
