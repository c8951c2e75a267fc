"""What a cell's training will cost, known before it runs: ``training_flops`` counts its model's
inference forward on PyTorch's meta device (the architecture only: no weights are read or made, no
arithmetic runs) at the training crop, and scales it to the whole run.

A training step's FLOPs are taken as 3 x the forward's for the parts that train (forward, then the
backward's two products per layer: the usual estimate, as in Kaplan et al.'s 6N per token) and 1 x
for a frozen trunk's forward (an upper bound: its features may be read from a cache instead).
Training-only work (auxiliary heads, losses, a head's prototype updates) is not counted. The grid
uses the number to start its costliest cells first; it is an estimate to order cells by, not a
measurement (``harness.measure.model`` measures a trained model)."""

from __future__ import annotations

import dataclasses
import json

import torch

from harness import metric_keys as keys
from harness.config import RunConfig
from harness.data import label_space
from harness.measure.flops import count_flops
from harness.modeling import INITIAL_WEIGHTS, build_segmentor, without_checkpoint

_FORWARD_AND_BACKWARD = 3  # a trained layer's step: its forward and the backward's two products
_TRUNK_PARTS = ("backbone", "neck")
_STEP_FLOPS: dict[str, float] = {}  # per-image step FLOPs by architecture key, once per process


def training_flops(cfg: RunConfig) -> float:
    """Estimated FLOPs of training ``cfg``: ``train.iters`` x ``data.batch_size`` images x the
    per-image step FLOPs (module docstring). Raises what building or running the model on the meta
    device raises (an op without a meta kernel, a bad config)."""
    key = _architecture_key(cfg)
    if key not in _STEP_FLOPS:
        _STEP_FLOPS[key] = _step_flops(cfg)
    return cfg.train.iters * cfg.data.batch_size * _STEP_FLOPS[key]


def _architecture_key(cfg: RunConfig) -> str:
    """What the per-image step FLOPs depend on: cells that differ only in seed or schedule share it."""
    return json.dumps([dataclasses.asdict(cfg.model), cfg.data.dataset, cfg.data.crop_size, cfg.trunk.frozen],
                      sort_keys=True, default=str)


def _step_flops(cfg: RunConfig) -> float:
    names, ignore = label_space(cfg.data.dataset)
    architecture = dataclasses.replace(cfg.model, backbone_kwargs=without_checkpoint(cfg.model.backbone_kwargs,
                                                                                       INITIAL_WEIGHTS))
    with torch.device("meta"):
        model = build_segmentor(dataclasses.replace(cfg, model=architecture), len(names), ignore)
        flops = count_flops(model, torch.zeros(1, 3, *cfg.data.crop_size))
    frozen = sum(flops.get(keys.gflops(part), 0.0) for part in _TRUNK_PARTS) if cfg.trunk.frozen else 0.0
    return 1e9 * (_FORWARD_AND_BACKWARD * (flops[keys.gflops()] - frozen) + frozen)
