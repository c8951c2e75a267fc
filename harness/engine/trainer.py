"""The training loop (detectron2's ``TrainerBase`` / ``SimpleTrainer`` shape): the loop runs
forward, backward and the optimiser step; what happens around steps is a hook."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from classifiers.base import PixelClassifier
from harness.config import TrainConfig
from harness.engine.precision import Precision
from harness.errors import first_line, is_out_of_memory
from harness.solver import build_optimizer, build_scheduler

_MICRO_SEED_STRIDE = 1_000_003


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
                         "lower data.batch_size or data.image_size, raise train.accumulate, or give the cell more memory")
        self.iteration = iteration


@dataclass
class TrainResult:
    iterations: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def micro_batch_seed(seed: int, iteration: int, micro_index: int, micro_batches: int) -> int:
    """The torch seed of a step's micro-batch ``micro_index`` (of ``micro_batches`` in the global
    batch): dropout masks and Gumbel noise depend on the data layout's global micro-batch,
    not on which worker runs it or whether the run restarted."""
    return (seed * _MICRO_SEED_STRIDE + iteration * micro_batches + micro_index) % (2**63 - 1)


class HookBase:
    """Called by ``Trainer`` around its loop; ``self.trainer`` is set on registration (a weak
    reference). ``after_step`` runs after every optimiser step, with ``trainer.iteration`` the
    number of steps done."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class Trainer:
    """``cfg.iters`` optimiser steps of ``model`` on ``batches`` (micro-batches, ``accumulate``
    per step), with hooks.

    One step: for each micro-batch, seed torch's generator (``micro_batch_seed``), forward
    under ``precision`` autocast, backward of the loss terms' sum over ``accumulate`` (DDP
    synchronises gradients on the last micro-batch only); then clip, step, schedule, and let
    each classifier head apply what it gathered over the step (``PixelClassifier.after_optimizer_step``,
    e.g. ProtoSeg's prototype update from every micro-batch and worker). Loss terms stay on the
    device (``step_losses``, averaged over micro-batches); nothing is copied to the host in
    the loop, hooks read them when they report.

    A batch is ``{"image", "sem_seg"}`` (and ``"image_size"``, each image's size before padding,
    ``Segmentor.normalise``) or, on a frozen trunk's cached features, ``{"features", "sem_seg"}``. ``module`` is what runs the forward (``model`` or its DDP wrapper); ``micro_index(a)`` is
    the global index of this worker's ``a``-th micro-batch (``DataParallelLayout.micro_index``),
    ``micro_batches`` their number per step over all workers. ``state`` (a checkpoint's
    ``state_dict()``) resumes training where it was written; ``batches`` must then start there.
    """

    def __init__(self, model: nn.Module, batches: Iterator[dict], cfg: TrainConfig, device: torch.device,
                 module: nn.Module | None = None, micro_index=lambda a: a, micro_batches: int | None = None,
                 state: dict | None = None) -> None:
        self.model, self.module, self.batches, self.cfg, self.device = model, module or model, batches, cfg, device
        self.micro_index, self.micro_batches = micro_index, micro_batches or cfg.accumulate
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.precision = Precision(cfg.precision, device)
        self.heads = [m for m in model.modules() if isinstance(m, PixelClassifier)]
        self.iteration = self.start_iteration = 0
        self.history: list[dict] = []
        self.loss_names: list[str] = []
        self.step_losses: torch.Tensor | None = None
        self._hooks: list[HookBase] = []
        if state is not None:
            self.load_state_dict(state)

    def register_hooks(self, hooks) -> None:
        for hook in hooks:
            if hook is not None:
                hook.trainer = weakref.proxy(self)
                self._hooks.append(hook)

    def state_dict(self) -> dict:
        """What a checkpoint holds of the training state (the sampler position is ``iteration``)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                "iteration": self.iteration, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("scaler", {}))
        self.iteration = self.start_iteration = state["iteration"]
        self.history = list(state["history"])

    def train(self) -> TrainResult:
        """Run from ``iteration`` to ``cfg.iters``. Raises ``TrainingOutOfMemoryError`` (with the
        iteration and micro-batch shape) when a step runs out of memory."""
        self.model.train()
        began = time.perf_counter()
        for hook in self._hooks:
            hook.before_train()
        while self.iteration < self.cfg.iters:
            self.run_step()
            self.iteration += 1
            for hook in self._hooks:
                hook.after_step()
        for hook in self._hooks:
            hook.after_train()
        return TrainResult(self.cfg.iters - self.start_iteration, time.perf_counter() - began, self.history)

    def _inputs(self, batch: dict) -> dict:
        """The model's arguments for ``batch``: images, targets and the images' unpadded sizes or,
        from a frozen trunk's cache (``harness.engine.features``), targets and features."""
        inputs = {"targets": batch["sem_seg"].to(self.device, non_blocking=True)}
        if "features" in batch:
            return {**inputs, "images": None, "features": batch["features"].to(self.device, non_blocking=True)}
        sizes = batch.get("image_size")
        return {**inputs, "images": batch["image"].to(self.device, non_blocking=True),
                "image_sizes": None if sizes is None else sizes.to(self.device, non_blocking=True)}

    def run_step(self) -> None:
        accumulate = self.cfg.accumulate
        sync = getattr(self.module, "no_sync", None)
        total_terms = None
        for a in range(accumulate):
            batch = next(self.batches)
            torch.manual_seed(micro_batch_seed(self.cfg.seed, self.iteration, self.micro_index(a), self.micro_batches))
            try:
                with (sync() if sync is not None and a < accumulate - 1 else contextlib.nullcontext()):
                    with self.precision.autocast():
                        losses = self.module(**self._inputs(batch)).losses
                    terms = torch.stack([v.detach().float() for v in losses.values()])
                    self.precision.backward(sum(losses.values()) / accumulate)
            except Exception as exc:
                if is_out_of_memory(exc):
                    shape = tuple(batch["image" if "image" in batch else "sem_seg"].shape)
                    raise TrainingOutOfMemoryError(self.iteration, shape, self.device, exc) from exc
                raise
            self.loss_names = list(losses)
            total_terms = terms if total_terms is None else total_terms + terms
        self.precision.step(self.optimizer, self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        for head in self.heads:
            head.after_optimizer_step()
        self.step_losses = total_terms / accumulate
