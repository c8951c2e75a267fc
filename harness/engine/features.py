"""Features of a frozen trunk computed once per training image and reused by every head on it:
``trunk_features`` (computed, or read from the cache file shared by the cells of a grid) and
``feature_batches`` (the training stream over them, step for step the images' stream)."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from backbones.features import Features
from harness.config import RunConfig, to_dict
from harness.data import DataParallelLayout, SemSegMapper, StepSampler
from harness.files import staged_file
from harness.modeling import Segmentor

_TRUNK_MODEL_KEYS = ("backbone", "neck", "embed_dim", "backbone_kwargs", "neck_kwargs")  # what shapes the features


@dataclass
class TrunkFeatures:
    """The trunk's features of N training images, in dataset order: ``pixel`` [N, D, h, w],
    ``pyramid`` (one [N, D, h_i, w_i] per level), ``labels`` [N, H, W] (int16) at ``image_size``."""

    pixel: Tensor
    pyramid: list[Tensor]
    labels: Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Tensor) -> dict:
        """The micro-batch of images ``indices``: ``{"features": Features, "sem_seg": long [b, H, W]}``."""
        features = Features(self.pixel[indices], [level[indices] for level in self.pyramid], self.image_size)
        return {"features": features, "sem_seg": self.labels[indices].long()}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.pixel, *self.pyramid, self.labels])


def cache_key(cfg: RunConfig, records: list[dict]) -> str:
    """What a cache file is keyed by: the trunk's weights digest, its architecture, the training
    images (their files) and the crop; 16 hex."""
    model = to_dict(cfg.model)
    identity = {"trunk": cfg.trunk.digest, "model": {k: model[k] for k in _TRUNK_MODEL_KEYS},
                "crop": list(cfg.data.crop_size), "scale": cfg.data.scale_range[0],
                "images": hashlib.sha256("\n".join(r["file_name"] for r in records).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _compute(model: Segmentor, records: list[dict], mapper: SemSegMapper, device: torch.device,
             batch_size: int) -> TrunkFeatures:
    pixel, pyramid, labels = [], [], []
    for start in range(0, len(records), batch_size):
        mapped = [mapper(r, seed=0) for r in records[start : start + batch_size]]
        images, filled = (torch.stack([m[key] for m in mapped]).to(device) for key in ("image", "image_size"))
        _, features = model.trunk(images, filled)
        pixel.append(features.pixel.float().cpu())
        pyramid.append([level.float().cpu() for level in features.pyramid])
        labels.append(torch.stack([m["sem_seg"] for m in mapped]).to(torch.int16))
    return TrunkFeatures(torch.cat(pixel), [torch.cat(levels) for levels in zip(*pyramid)], torch.cat(labels),
                         tuple(labels[0].shape[-2:]))


def trunk_features(model: Segmentor, records: list[dict], mapper: SemSegMapper, device: torch.device,
                   batch_size: int, folder: Path | None, key: str) -> tuple[TrunkFeatures, str]:
    """The frozen trunk's features of every record (mapped by ``mapper``, whose augmentation must be
    fixed: ``SemSegMapper.is_fixed``), computed in float32 in batches of ``batch_size``. With a
    ``folder``, cached there as ``<key>.pt``: the first cell computes and writes it (whole, under a
    file lock), the cells after it read it. Returns (features, what happened: computed, cached at
    or read from which file)."""
    if folder is None:
        return _compute(model, records, mapper, device, batch_size), "computed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.pt"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second cell waits for the first's file instead of computing it too
        if path.is_file():
            return TrunkFeatures(**torch.load(path, map_location="cpu", weights_only=True)), f"read from {path}"
        features = _compute(model, records, mapper, device, batch_size)
        with staged_file(path) as part:
            torch.save(vars(features), part)
    return features, f"computed, cached at {path}"


def feature_batches(features: TrunkFeatures, seed: int, layout: DataParallelLayout,
                    start_step: int = 0) -> Iterator[dict]:
    """Endless micro-batches of cached features in ``StepSampler``'s order: the images (and, with
    fixed augmentation, the inputs) each step would have loaded."""
    for micro in StepSampler(len(features), seed, layout, start_step):
        yield features.batch(torch.tensor([index for index, _ in micro]))
