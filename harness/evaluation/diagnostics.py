"""A head's own diagnostics over validation images (``diagnose``): ``PixelClassifier.diagnostics``
on each image, averaged over the images."""

from __future__ import annotations

import torch
from torch import Tensor

from classifiers import PixelClassifier
from harness.modeling import Segmentor

DIAGNOSTIC_PREFIX = "diag/"  # the metric names of a head's scalar diagnostics


@torch.no_grad()
def diagnose(model: Segmentor, loader, device: torch.device, max_images: int = 64) -> dict[str, Tensor]:
    """``model.classifier.diagnostics`` on each of the first ``max_images`` images of ``loader`` (a
    test loader: lists of ``{"image", "sem_seg"}``), one at a time at its own size, in eval mode;
    each entry averaged over the images where it is not NaN (NaN where it never is). {} for a head
    without diagnostics, without running anything."""
    head = model.classifier
    if type(head).diagnostics is PixelClassifier.diagnostics:
        return {}
    model.eval()
    sums: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    seen = 0
    for batch in loader:
        for item in batch:
            if seen == max_images:
                break
            _, features = model.trunk(item["image"][None].to(device))
            for name, value in head.diagnostics(features, item["sem_seg"][None].to(device)).items():
                value = value.detach().float().cpu()
                known = ~value.isnan()
                sums[name] = sums.get(name, 0) + torch.where(known, value, 0)
                counts[name] = counts.get(name, 0) + known
            seen += 1
    return {name: sums[name] / counts[name] for name in sums}  # 0/0: NaN where no image said anything


def split_diagnostics(values: dict[str, Tensor]) -> tuple[dict[str, float], dict[str, list]]:
    """(scalar diagnostics as ``diag/<name>`` metrics, the others as nested lists)."""
    scalars = {f"{DIAGNOSTIC_PREFIX}{name}": float(v) for name, v in values.items() if v.dim() == 0}
    return scalars, {name: v.tolist() for name, v in values.items() if v.dim() > 0}
