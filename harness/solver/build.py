"""The optimiser and its schedule (detectron2's ``solver``): parameter groups with MMEngine's
``custom_keys`` multipliers, AdamW or SGD, poly decay with a linear warm-up."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.config import TrainConfig
from harness.errors import InputError

_WARMUP_START = 1e-3


def _multipliers(name: str, param: Tensor, custom: dict[str, dict]) -> tuple[float, float]:
    """(lr_mult, decay_mult) of parameter ``name``: from the longest ``custom`` key it contains
    (MMEngine's ``paramwise_cfg.custom_keys``); 1-d parameters (biases, norms) default to no decay."""
    decay = 0.0 if param.ndim <= 1 else 1.0
    keys = sorted((key for key in custom if key in name), key=lambda key: (-len(key), key))
    if not keys:
        return 1.0, decay
    chosen = custom[keys[0]]
    return float(chosen.get("lr_mult", 1.0)), float(chosen.get("decay_mult", decay))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimiser's groups: parameters with the same (lr_mult, decay_mult) together, lr =
    ``cfg.lr`` x lr_mult and weight decay = ``cfg.weight_decay`` x decay_mult; the group at the
    base lr first (the one ``MetricsHook`` reports). ``InputError`` naming a ``train.param_groups``
    key that matches no parameter."""
    custom = cfg.param_groups
    unused = [key for key in custom if not any(key in name for name, _ in model.named_parameters())]
    if unused:
        raise InputError(f"train.param_groups.{unused[0]}: matches no parameter name of this model "
                         f"(names look like {next(model.named_parameters())[0]!r})")
    grouped: dict[tuple[float, float], list[Tensor]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grouped.setdefault(_multipliers(name, param, custom), []).append(param)
    order = sorted(grouped, key=lambda mults: (mults[0] != 1.0, -mults[1], mults))
    return [{"params": grouped[(lr, decay)], "lr": cfg.lr * lr, "weight_decay": cfg.weight_decay * decay,
             "lr_mult": lr, "decay_mult": decay} for lr, decay in order]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD over ``param_groups``: no weight decay on biases, norms and other
    1-d parameters, ``train.param_groups`` multipliers on top.

    Uses the fused AdamW kernel where torch has one for the parameters' device."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise InputError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; expected one of: adamw, sgd")


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Poly decay (1 - t/T)^power, times a linear warm-up from 1e-3 over ``warmup_iters``."""
    factor = (1.0 - min(iteration, cfg.iters) / cfg.iters) ** cfg.poly_power
    if iteration < cfg.warmup_iters:
        factor *= _WARMUP_START + (1.0 - _WARMUP_START) * iteration / cfg.warmup_iters
    return factor
