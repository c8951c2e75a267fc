"""FLOPs and MACs of a model's inference forward (``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from harness import metric_keys as keys
from harness.measure.params import PART_NAMES

# Matrix products between activations (attention maps, pixel-to-class similarities), as
# opposed to Linear and Conv layers: counters that hook layers only (mmcv's
# get_model_complexity_info, which the papers' tables used) skip them.
_PRODUCT_OPS = ("aten.bmm", "aten.baddbmm", "aten._scaled_dot_product")


def count_flops(model: nn.Module, images: Tensor) -> dict[str, float]:
    """Inference FLOPs of ``model(images)`` per image: ``gflops/total`` and ``gmacs/total``,
    and the same for each direct child module that does any (a ``Segmentor``'s
    ``backbone``, ``neck`` and ``head``; work outside its children is in the total only);
    ``*/matmul``, the batched products between activations (attention), and
    ``*/layers_only``, the total without them, what layer-hook counters report."""
    was_training = model.training
    # Parameters frozen while counting: the counter's module tracker would hook every
    # parameter that one module passes to another as an input.
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    try:
        with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root, batch = type(model).__name__, images.shape[0]
    flops = {"total": counter.get_total_flops()}
    for child, _ in model.named_children():
        if per_module.get(f"{root}.{child}"):
            flops[PART_NAMES.get(child, child)] = per_module[f"{root}.{child}"]
    products = sum(count for op, count in counter.get_flop_counts().get("Global", {}).items()
                   if str(op).startswith(_PRODUCT_OPS))
    flops["matmul"], flops["layers_only"] = products, flops["total"] - products
    out = {}
    for part, count in flops.items():
        out[keys.gflops(part)] = count / batch / 1e9
        out[keys.gmacs(part)] = count / batch / 2e9
    return out
