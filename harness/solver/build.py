"""The optimiser and its schedule (detectron2's ``solver``): parameter groups with MMEngine's
``custom_keys`` multipliers, AdamW or SGD, poly decay with a linear warm-up (segheads' or MMSeg's)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.config import TrainConfig
from harness.errors import InputError


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


def lr_at(iteration: int, cfg: TrainConfig, base_lr: float) -> float:
    """The learning rate at step ``iteration`` of a parameter group whose rate is ``base_lr``
    (``cfg.lr`` x its lr_mult). With W = ``warmup_iters``, s = ``warmup_ratio``, T = ``iters``,
    eta = ``min_lr``, p = ``poly_power``:

    - ``poly``: (eta + (base - eta) (1 - t/T)^p) x (s + (1 - s) t / W while t < W);
    - ``mmseg``: MMEngine's ``LinearLR(start_factor=s, begin=0, end=W)`` then
      ``PolyLR(eta_min=eta, power=p, begin=W, end=T)``, whose chained updates reach
      base (s + (1 - s) t / (W - 1)) for t < W, then eta + (base - eta) (1 - (t - W) / (T - W - 1))^p
      (MMEngine counts each scheduler's ``end - begin - 1`` steps)."""
    return base_lr * _factor(iteration, cfg, cfg.min_lr / base_lr)


def _factor(t: int, cfg: TrainConfig, floor: float) -> float:
    """``lr_at`` over ``base_lr``; ``floor`` = min_lr / base_lr."""
    warmup, start = cfg.warmup_iters, cfg.warmup_ratio
    if cfg.schedule == "poly":
        factor = floor + (1.0 - floor) * (1.0 - min(t, cfg.iters) / cfg.iters) ** cfg.poly_power
        return factor * (start + (1.0 - start) * t / warmup) if t < warmup else factor
    if t < warmup:
        return start + (1.0 - start) * t / (warmup - 1) if warmup > 1 else start
    steps = cfg.iters - warmup - 1
    if steps <= 0:
        return 1.0
    return floor + (1.0 - floor) * (1.0 - min(t - warmup, steps) / steps) ** cfg.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``lr_at`` for each of ``optimizer``'s groups (each from its own base rate)."""
    floors = [cfg.min_lr / group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda t, floor=floor: _factor(t, cfg, floor)
                                                         for floor in floors])
