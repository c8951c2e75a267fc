"""Test-time protocols (``predict_logits``: resize, sliding windows, scales x flips, MMSegmentation's
``slide_inference`` and ``SegTTAModel``) and inference over a test loader into a ``SemSegEvaluator``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import EvalConfig
from harness.data.transforms import rescale_size

_WINDOWS_PER_FORWARD = 4  # sliding windows stacked into one forward (bounds memory, as MMSeg's one at a time)


def _protocol_size(height: int, width: int, cfg: EvalConfig) -> tuple[int, int]:
    """The size (h, w) an image is predicted at before ``scales``: ``short_side`` with the long
    side capped at ``max_long_side``, keeping the ratio (``harness.data.transforms.rescale_size``)."""
    new_width, new_height = rescale_size(width, height, cfg.short_side, cfg.max_long_side)
    return new_height, new_width


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _slide(model: nn.Module, images: Tensor, crop: list[int], stride: list[int]) -> Tensor:
    """Logits of ``images`` [B, 3, H, W] from windows of ``crop`` every ``stride``, summed where
    they overlap and divided by the count (MMSeg ``EncoderDecoder.slide_inference``); windows
    at the bottom and right edges end at the border, a window larger than the image is the image."""
    batch, _, height, width = images.shape
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            boxes.append((max(bottom - crop_h, 0), max(right - crop_w, 0), bottom, right))
    total, count = None, images.new_zeros(1, 1, height, width)
    for start in range(0, len(boxes), _WINDOWS_PER_FORWARD):
        chunk = boxes[start : start + _WINDOWS_PER_FORWARD]
        logits = model.predict(torch.cat([images[..., t:b, l:r] for t, l, b, r in chunk]))
        if total is None:
            total = images.new_zeros(batch, logits.shape[1], height, width)
        for (top, left, bottom, right), window in zip(chunk, logits.split(batch)):
            total[..., top:bottom, left:right] += window
            count[..., top:bottom, left:right] += 1
    return total / count


def predict_logits(model: nn.Module, image: Tensor, cfg: EvalConfig) -> Tensor:
    """Class scores of ``image`` (uint8 or float in [0, 255], [3, H, W], or same-size [B, 3, H, W])
    at its original size: [C, H, W] (or [B, C, H, W]) under protocol ``cfg``. One view gives its
    logits; several (scales x flips) the mean of their softmax probabilities. ``model`` is a
    ``Segmentor`` in eval mode; the image moves to its device."""
    return _predict(model, image, cfg)[0]


def predict_labels_and_confidence(model: nn.Module, image: Tensor, cfg: EvalConfig) -> tuple[Tensor, Tensor]:
    """(the argmax of ``predict_logits``, the probability of that class): one view's softmax, or
    several views' mean probability. [H, W] each (or [B, H, W])."""
    scores, are_probabilities = _predict(model, image, cfg)
    top, labels = scores.max(dim=-3)
    if are_probabilities:
        return labels, top
    return labels, (top - scores.logsumexp(dim=-3)).exp_()  # the top class's softmax probability, no softmax map


@torch.no_grad()
def _predict(model: nn.Module, image: Tensor, cfg: EvalConfig) -> tuple[Tensor, bool]:
    """(``predict_logits``' scores, whether they are probabilities already)."""
    single = image.dim() == 3
    images = (image[None] if single else image).to(next(model.parameters()).device, torch.float32)
    height, width = images.shape[-2:]
    base = _protocol_size(height, width, cfg)
    views = [(scale, flip) for scale in cfg.scales for flip in ((False, True) if cfg.flip else (False,))]
    merged = None
    for scale, flip in views:
        size = base if scale == 1.0 else (int(base[0] * scale + 0.5), int(base[1] * scale + 0.5))
        view = _resize(images, size)
        view = view.flip(-1) if flip else view
        logits = model.predict(view) if cfg.mode == "whole" else _slide(model, view, cfg.crop_size, cfg.stride)
        logits = _resize(logits.flip(-1) if flip else logits, (height, width))
        if len(views) == 1:  # one view: its logits as they are
            return (logits[0] if single else logits), False
        scores = logits.softmax(dim=1)
        merged = scores if merged is None else merged.add_(scores)
    merged.div_(len(views))
    return (merged[0] if single else merged), True
