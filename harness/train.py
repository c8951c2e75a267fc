"""Iteration-based trainer: optimiser, warm-up + poly schedule, clipping, per-term logging, checkpoints."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.config import TrainConfig
from harness.errors import InputError, first_line, is_out_of_memory

CHECKPOINT_NAME = "checkpoint.pt"
_WARMUP_START = 1e-3


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; ``iteration`` and ``losses`` say where and which."""

    def __init__(self, iteration: int, losses: dict[str, float]) -> None:
        super().__init__(f"non-finite loss at iteration {iteration}: {losses}")
        self.iteration, self.losses = iteration, losses


class TrainingOutOfMemoryError(RuntimeError):
    """The device ran out of memory during a training step; ``iteration`` says which."""

    def __init__(self, iteration: int, batch_shape: tuple, device: torch.device, cause: BaseException) -> None:
        super().__init__(f"out of memory at iteration {iteration} (batch {list(batch_shape)} on {device}): "
                         f"{first_line(cause)}; "
                         "lower data.batch_size or data.image_size, or give the cell more memory")
        self.iteration = iteration


@dataclass
class TrainResult:
    iterations: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD; no weight decay on biases, norms and other 1-d parameters.

    Uses the fused AdamW kernel where torch has one for the parameters' device."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
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


def _save_checkpoint(path: Path, model, optimizer, scheduler, iteration: int, history: list[dict]) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "iteration": iteration, "history": history, "rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _step(model, batch, optimizer, scheduler, cfg: TrainConfig, device, iteration: int) -> dict[str, float]:
    """One optimisation step; the loss terms' values."""
    images = batch["image"].to(device, non_blocking=True)
    targets = batch["sem_seg"].to(device, non_blocking=True)
    losses = model(images, targets).losses
    total = sum(losses.values())
    values = {name: float(v.detach()) for name, v in losses.items()}
    if not math.isfinite(float(total.detach())):
        raise NonFiniteLossError(iteration, values)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return values


def train(
    model: nn.Module,
    batches: Iterator[dict],
    cfg: TrainConfig,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` for ``cfg.iters`` iterations on ``batches``.

    Every ``log_period`` iterations (and at the last) one history row records each
    loss term, their sum and the learning rate, averaged over the period. With a
    ``checkpoint_dir`` a checkpoint is written every ``checkpoint_period`` iterations
    (if > 0) and at the end; ``resume=True`` continues from it. Raises
    ``NonFiniteLossError`` at the first iteration whose loss is NaN or inf and
    ``TrainingOutOfMemoryError`` (with the iteration and batch shape) when a step runs out of memory.
    """
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    start, history = 0, []
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = checkpoint_dir / CHECKPOINT_NAME
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["iteration"], state["history"]
        torch.set_rng_state(state["rng"])
    sums: dict[str, float] = {}
    period_start = start
    began = time.perf_counter()
    for iteration in range(start, cfg.iters):
        batch = next(batches)
        try:
            values = _step(model, batch, optimizer, scheduler, cfg, device, iteration)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise TrainingOutOfMemoryError(iteration, tuple(batch["image"].shape), device, exc) from exc
            raise
        for name, value in {**values, "total": sum(values.values())}.items():
            sums[name] = sums.get(name, 0.0) + value
        done = iteration + 1
        if done % cfg.log_period == 0 or done == cfg.iters:
            count = done - period_start
            history.append({"iteration": done, "lr": optimizer.param_groups[0]["lr"],
                            **{f"loss/{k}": v / count for k, v in sums.items()}})
            sums, period_start = {}, done
        if checkpoint is not None and cfg.checkpoint_period > 0 and done % cfg.checkpoint_period == 0:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, done, history)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, model, optimizer, scheduler, cfg.iters, history)
    return TrainResult(iterations=cfg.iters - start, seconds=time.perf_counter() - began, history=history)
