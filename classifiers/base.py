"""The contract every pixel classifier head keeps (docs/architecture.md, "Classifiers")."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import Features
from harness.errors import InputError

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def check_choice(head: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    """``InputError`` naming the head, the option and its allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise InputError(f"{head}: {key}={value!r}; expected one of: {', '.join(allowed)}")


def resolve_preset(head: str, presets: dict[str, dict], hparams: dict) -> dict:
    """A paper head's settings: ``presets[hparams["preset"]]`` (default ``"code"``), then every
    option of ``hparams`` that is not ``None``. Returns ``{"preset": name, **settings}``, the
    resolved form the harness logs and hashes (docs/architecture.md, "Fidelity")."""
    preset = hparams.get("preset") or "code"
    check_choice(head, "preset", preset, tuple(presets))
    given = {key: value for key, value in hparams.items() if value is not None and key != "preset"}
    return {"preset": preset, **presets[preset], **given}


def upsample(logits: Tensor, size, align_corners: bool = False) -> Tensor:
    """``logits`` resized bilinearly to ``size`` (returned as they are when already that size)."""
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


# How a pixel CE is averaged (``loss_average``): over the labelled pixels (torch's
# ``reduction="mean"``) or over all of them, ignored ones counting 0 (MMSegmentation's
# ``CrossEntropyLoss`` with ``avg_non_ignore=False``, every one of its configs' default).
LOSS_AVERAGES = ("labelled", "all")


def pixel_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = 255, align_corners: bool = False,
                        average: str = "labelled") -> Tensor:
    """Pixel-wise CE after bilinear upsampling of ``logits`` to the target resolution, summed and
    divided by the labelled pixels (``average="labelled"``; 0, not NaN, when every pixel is
    ignored) or by all pixels (``"all"``, MMSegmentation's: ignored pixels dilute the loss)."""
    logits = upsample(logits, targets.shape[-2:], align_corners)
    targets = targets.long()
    summed = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if average == "all":
        return summed / targets.numel()
    return summed / (targets != ignore_index).sum().clamp(min=1)


def full_precision(x: Tensor):
    """A region that runs in float32 inside autocast (cast its inputs with ``.float()``): the
    heads' cosine, similarity, softmax and Sinkhorn maths, as Mask2Former's matcher does.
    (Devices without autocast, such as ``meta``, have nothing to turn off.)"""
    if not torch.amp.is_autocast_available(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (each pixel's D values)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@dataclass
class ClassifierOutput:
    """logits: [B, C, h, w] at the head's own resolution; losses: named, already weighted."""

    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)


class PixelClassifier(nn.Module):
    """Base class of all classifier heads.

    ``forward(features, targets=None)``: with ``targets`` ([B, H, W] integer labels at
    input resolution, ``ignore_index`` for unlabelled pixels) the head returns every
    loss term by name; without targets it returns logits only and does no
    training-only work.

    Accounting read by the harness:
    - ``learnable_parameters()``: parameters updated by the optimiser;
    - ``nonlearnable_state()``: persistent buffers that are part of the model but not
      learned by gradient (e.g. prototypes), excluding normalisation statistics;
    - ``training_only_modules()``: sub-modules that never run at inference (e.g. a teacher).

    ``diagnostics(features, targets)`` (optional) returns what a head shows about itself (ProtoSeg's
    prototype usage, SSA's prototype shift, ECENet's class-embedding similarities).

    ``after_optimizer_step()`` is called by the trainer once per optimiser step, after the
    forwards of every micro-batch on every worker: a head whose state moves outside the
    gradient (ProtoSeg's momentum prototypes) gathers what its training forwards saw and
    applies it there, all-reduced across workers, so that every worker holds the same state.
    Such a head sets ``ACCUMULATES_STATE = True``: two micro-batches then a step leave the state
    one batch of both would (``harness.testing.check_classifier`` checks it).

    ``loss_average`` (``LOSS_AVERAGES``) is how the head's pixel CE is averaged (``cross_entropy``),
    and with it the cell's other pixel CEs (the auxiliary head's, a neck's own): over labelled
    pixels or over all, as the code base the head comes from does (a paper head's preset says).

    ``CONV_SEG`` names the sub-modules that play MMSegmentation's final classifier ``conv_seg``
    (initialised N(0, 0.01) under ``model.init: mmseg``).

    A paper head sets ``PRESETS`` (``{"code": {...}, "paper": {...}}``, option -> value):
    each of those options is a keyword defaulting to ``None`` ("from the preset"), and the
    head reads its settings through ``preset_options``; ``PRESET_CHOICES`` lists the allowed
    values of the options that take names.
    """

    PRESETS: dict[str, dict] = {}
    PRESET_CHOICES: dict[str, tuple[str, ...]] = {}
    CONV_SEG: tuple[str, ...] = ()
    ACCUMULATES_STATE = False

    def __init__(self, num_classes: int, in_channels: int, ignore_index: int = 255,
                 loss_average: str = "labelled") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        check_choice(type(self).__name__, "loss_average", loss_average, LOSS_AVERAGES)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.loss_average = loss_average

    def forward(self, features: Features, targets: Tensor | None = None) -> ClassifierOutput:
        raise NotImplementedError

    def preset_options(self, head: str, arguments: dict) -> dict:
        """The settings of a paper head built with constructor ``arguments`` (its ``locals()``):
        ``resolve_preset`` over ``preset`` and the options ``PRESETS`` names, each named value
        checked against ``PRESET_CHOICES``."""
        options = resolve_preset(head, self.PRESETS, {key: arguments[key] for key in ("preset", *self.PRESETS["code"])})
        for key, allowed in self.PRESET_CHOICES.items():
            check_choice(head, key, options[key], allowed)
        return options

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def nonlearnable_state(self) -> dict[str, Tensor]:
        state = {}
        for prefix, module in self.named_modules():
            if isinstance(module, NORM_LAYERS):
                continue
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buf
        return state

    def training_only_modules(self) -> dict[str, nn.Module]:
        return {}

    def after_optimizer_step(self) -> None:
        """Apply what this step's training forwards gathered (default: nothing)."""

    def diagnostics(self, features: Features, targets: Tensor) -> dict[str, Tensor]:
        """This head's own diagnostics on one image or batch (``targets`` [B, H, W] at input
        resolution): name -> tensor (a scalar, a per-class vector, a matrix), NaN where the batch
        says nothing (a class it lacks). The harness calls it in eval mode, without gradients, on
        validation images one at a time, averages each entry over them leaving NaNs out
        (``harness.evaluation.diagnose``), and logs scalars as ``diag/<name>`` metrics and the rest
        in the cell's ``diagnostics``. Default: none."""
        return {}

    def labels_at(self, targets: Tensor, size) -> Tensor:
        """Integer labels [B, h, w] sampled nearest from ``targets`` at the head's resolution ``size``."""
        return F.interpolate(targets[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()

    def one_hot(self, labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One-hot [B, C, H, W] of ``labels``, zero at ignore pixels, and the labelled mask [B, 1, H, W]."""
        labelled = labels != self.ignore_index
        valid = labelled[:, None].to(dtype)
        onehot = F.one_hot(labels * labelled, self.num_classes).permute(0, 3, 1, 2).to(dtype)
        return onehot * valid, valid

    def cross_entropy(self, logits: Tensor, targets: Tensor, align_corners: bool = False,
                      average: str | None = None) -> Tensor:
        """``pixel_cross_entropy`` with this head's ``ignore_index`` and (unless ``average`` says)
        its ``loss_average``."""
        return pixel_cross_entropy(logits, targets, self.ignore_index, align_corners, average or self.loss_average)
