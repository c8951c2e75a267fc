"""A cell's model from its config: ``build_segmentor`` (fresh), ``load_segmentor`` (trained weights),
``state_dict_bytes`` (what a FINISHED cell logs)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch

from backbones import build_backbone, build_neck
from backbones.necks import neck_accepts, neck_uses_auxiliary
from classifiers import build_classifier, classifier_accepts, resolve_classifier_kwargs
from harness.config import RunConfig
from harness.data import label_space
from harness.errors import InputError
from harness.modeling.init import mmseg_init
from harness.modeling.pretrain import INITIAL_WEIGHTS, resolve_backbone_kwargs, without_checkpoint
from harness.modeling.segmentor import AuxiliaryFCNHead, Segmentor
from harness.plugins import activate


def resolve_classifier(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``model.classifier_kwargs`` resolved: a paper head's preset spelled out
    option by option, so the settings a cell runs with are its logged params and change
    its ``config_hash``. Idempotent; heads without presets keep their kwargs as given."""
    kwargs = resolve_classifier_kwargs(cfg.model.classifier, cfg.model.classifier_kwargs)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, classifier_kwargs=kwargs))


def build_segmentor(cfg: RunConfig, num_classes: int, ignore_label: int) -> Segmentor:
    """Backbone (``checkpoint: builtin:digits`` pretrained on first use, ``harness.modeling.pretrain``),
    neck (``model.neck_kwargs``), classifier head and, when the neck trains
    with one by default or ``neck_kwargs.auxiliary`` says so and the trunk is not frozen, the
    auxiliary FCN head;
    ``model.init: mmseg`` initialises the decoder as MMSegmentation does (``mmseg_init``)."""
    activate(cfg, strict=False)  # a logged plugin cell read back: its plugins imported here
    m = cfg.model
    backbone = build_backbone(m.backbone, **resolve_backbone_kwargs(m.backbone, m.backbone_kwargs))
    neck_kwargs = dict(m.neck_kwargs)
    use_auxiliary = neck_kwargs.pop("auxiliary", neck_uses_auxiliary(m.neck)) and not cfg.trunk.frozen
    if neck_accepts(m.neck, "num_classes"):  # a decoder with its own prediction (OCRNet's regions)
        neck_kwargs.setdefault("num_classes", num_classes)
    try:
        neck = build_neck(m.neck, backbone.channels, backbone.strides, m.embed_dim, **neck_kwargs)
    except TypeError as exc:
        raise InputError(f"model.neck_kwargs {neck_kwargs}: not options of neck {m.neck!r} ({exc})") from None
    auxiliary = None
    if use_auxiliary:
        if len(backbone.channels) < 3:
            raise InputError(f"model.neck_kwargs.auxiliary: the auxiliary head reads stage 3, and backbone "
                             f"{m.backbone!r} has {len(backbone.channels)} stages")
        auxiliary = AuxiliaryFCNHead(backbone.channels[2], num_classes, ignore_label)
    kwargs = dict(m.classifier_kwargs)
    if classifier_accepts(m.classifier, "stage_channels"):  # a head that reads every stage learns their widths
        kwargs.setdefault("stage_channels", getattr(neck, "pyramid_channels", [m.embed_dim] * len(backbone.channels)))
    elif hasattr(neck, "pyramid_channels"):
        raise InputError(f"neck {m.neck!r} passes the backbone's stages through unchanged; classifier "
                         f"{m.classifier!r} needs a D-wide neck (mlp, fpn, ...)")
    classifier = build_classifier(m.classifier, num_classes=num_classes, in_channels=m.embed_dim,
                                  ignore_index=ignore_label, **kwargs)
    model = Segmentor(backbone, neck, classifier, auxiliary)
    if m.init == "mmseg":
        mmseg_init(model)
    return model


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """``model``'s state dict as ``torch.save`` writes it (what a FINISHED cell logs as ``weights.pt``)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def load_segmentor(cfg: RunConfig, weights: bytes | str | Path) -> Segmentor:
    """``cfg``'s model with trained weights (a state dict as bytes or a file, read with
    ``weights_only=True``), on the CPU, in eval mode. The label space is ``cfg``'s dataset's."""
    source = io.BytesIO(weights) if isinstance(weights, bytes) else weights
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"weights {'(bytes)' if isinstance(weights, bytes) else weights}: not a state dict "
                         f"torch.load can read ({type(exc).__name__})") from None
    classes, ignore = label_space(cfg.data.dataset)
    # The trained weights replace every parameter, so the backbone's initial ones (a file that
    # may live on another machine, builtin weights not made here yet, the model hub's) are not loaded.
    bare = without_checkpoint(cfg.model.backbone_kwargs, INITIAL_WEIGHTS)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_kwargs=bare))
    model = build_segmentor(cfg, len(classes), ignore)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"weights do not fit {cfg.model.classifier}@{cfg.model.backbone}/{cfg.model.neck} with "
                         f"{len(classes)} classes: {str(exc).splitlines()[0]}") from None
    return model.eval()
